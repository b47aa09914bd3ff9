//! `hotpair orphans show|apply FILE`: what a rejoin set aside, and putting chosen parts of it
//! back.
//!
//! ## Job
//! A rejoin saves the old primary's orphaned transactions (committed there, never received by
//! the new primary) in `<node dir>/orphans/orphans-<first>-<last>-<op>.jsonl`, one transaction
//! per line, newest first (`node::primitives`, `save_orphans`; the format is in
//! docs/runbook.md, procedure 3). `show` prints them oldest first, readable: LSN, epoch, commit
//! time, and per key the value before and after. `apply` re-applies the chosen ones (`--lsn N`,
//! repeatable, or `--all`) as new writes through the current primary's data port, in their
//! original order, after checking each key: a key whose value is no longer the orphan's
//! before-image was changed since (by the new primary's clients), and the transaction is
//! refused unless `--force`; a key that already holds the after-image needs nothing. `--dry-run`
//! prints the plan and writes nothing.
//!
//! ## Invariants
//! - Every chosen transaction is checked before the first write: a refusal changes nothing
//!   (exit 1). The check runs against the values as the earlier chosen transactions will leave
//!   them, so two orphans that touched the same key in turn check out.
//! - Re-running is safe: a transaction whose keys already hold its after-images is skipped, so
//!   after a failure part-way (exit 3) the same command finishes the job.
//!
//! ## Caveats
//! - Check and write are two steps: a client writing the same key between them wins or loses
//!   without the tool knowing. Stop the writers of those keys first if that matters.
//! - A transaction is one `MSET` when it only sets keys without an expiry, one `DEL` when it only
//!   deletes; otherwise it takes several commands and is not applied atomically (said so).
//! - The data port is reached in plain RESP without a password.
//! - A value that has expired since is not re-applied (said so); one that expires later is set
//!   with the time it has left.
//! - What an increment (`INCRBY`) orphaned is saved as the value it produced, and re-applied as
//!   that value: against a key that moved on since, that is a conflict to look at, not a sum.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::config::PairConfig;
use crate::resp::frame::{self, Frame};

#[derive(Debug, thiserror::Error)]
pub enum OrphansError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} line {line}: {reason}", path.display())]
    Format { path: PathBuf, line: usize, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    PartWay(String),
}

impl OrphansError {
    /// 3 when something was written before the failure (INTERFACE.md), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            OrphansError::PartWay(_) => 3,
            _ => 1,
        }
    }
}

/// One value as the orphans file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Value {
        data: Vec<u8>,
        expires_at_ms: Option<u64>,
    },
    /// Stored bytes that are not a plain value (`{"raw": …}`): shown, never re-applied.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanOp {
    pub key: Vec<u8>,
    pub before: Option<Image>,
    pub after: Option<Image>,
}

/// One orphaned transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub lsn: u64,
    pub epoch: u64,
    pub time_ms: u64,
    pub ops: Vec<OrphanOp>,
}

/// Reads an orphans file; returns its transactions oldest first.
pub fn read(path: &Path) -> Result<Vec<Orphan>, OrphansError> {
    let file = std::fs::File::open(path).map_err(|source| OrphansError::Io { path: path.to_path_buf(), source })?;
    let mut orphans = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| OrphansError::Io { path: path.to_path_buf(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| OrphansError::Format { path: path.to_path_buf(), line: index + 1, reason };
        let value: Value = serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        orphans.push(parse_orphan(&value).map_err(bad)?);
    }
    orphans.sort_by_key(|o| o.lsn);
    Ok(orphans)
}

fn parse_orphan(value: &Value) -> Result<Orphan, String> {
    let number = |field: &str| value[field].as_u64().ok_or_else(|| format!("no `{field}` number"));
    let ops = value["ops"].as_array().ok_or("no `ops` list")?;
    let ops = ops
        .iter()
        .map(|op| {
            Ok(OrphanOp {
                key: bytes_of(&op["key"]).ok_or("an op has no readable `key`")?,
                before: image_of(&op["before"])?,
                after: image_of(&op["after"])?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Orphan { lsn: number("lsn")?, epoch: number("epoch")?, time_ms: number("time_ms")?, ops })
}

/// Text as its UTF-8 bytes, `{"hex": …}` as the bytes it spells.
fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    if let Some(text) = value.as_str() {
        return Some(text.as_bytes().to_vec());
    }
    let hex = value.get("hex")?.as_str()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

fn image_of(value: &Value) -> Result<Option<Image>, String> {
    if value.is_null() {
        return Ok(None);
    }
    if let Some(raw) = value.get("raw") {
        return Ok(Some(Image::Raw(bytes_of(raw).ok_or("unreadable `raw` value")?)));
    }
    let data = bytes_of(&value["data"]).ok_or("a value has no readable `data`")?;
    Ok(Some(Image::Value { data, expires_at_ms: value["expires_at_ms"].as_u64() }))
}

fn data_of(image: &Option<Image>) -> Option<&[u8]> {
    match image {
        Some(Image::Value { data, .. }) => Some(data),
        Some(Image::Raw(bytes)) => Some(bytes),
        None => None,
    }
}

/// Bytes for people: printable ASCII as is, the rest escaped, long values cut.
fn shown(bytes: &[u8]) -> String {
    const SHOWN: usize = 60;
    let text: String = bytes.iter().take(SHOWN).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if bytes.len() > SHOWN {
        format!("\"{text}…\" ({} bytes)", bytes.len())
    } else {
        format!("\"{text}\"")
    }
}

fn shown_image(image: &Option<Image>) -> String {
    match image {
        None => "(absent)".into(),
        Some(Image::Value { data, expires_at_ms: None }) => shown(data),
        Some(Image::Value { data, expires_at_ms: Some(at) }) => {
            format!("{} expiring {}", shown(data), crate::backup::format_time(Some(*at)))
        }
        Some(Image::Raw(bytes)) => format!("raw {}", shown(bytes)),
    }
}

/// `orphans show`: the transactions, oldest first, as text or JSON lines.
pub fn show(path: &Path, as_json: bool) -> Result<String, OrphansError> {
    let orphans = read(path)?;
    let mut out = String::new();
    if as_json {
        // The file's own lines, oldest first, for scripts.
        let text =
            std::fs::read_to_string(path).map_err(|source| OrphansError::Io { path: path.to_path_buf(), source })?;
        let mut lines: Vec<(u64, &str)> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (serde_json::from_str::<Value>(l).ok().and_then(|v| v["lsn"].as_u64()).unwrap_or(0), l))
            .collect();
        lines.sort_by_key(|(lsn, _)| *lsn);
        for (_, line) in lines {
            out.push_str(line);
            out.push('\n');
        }
        return Ok(out);
    }
    let (first, last) = (orphans.first(), orphans.last());
    out.push_str(&format!(
        "{}: {} orphaned transaction(s){}\n",
        path.display(),
        orphans.len(),
        match (first, last) {
            (Some(f), Some(l)) => format!(
                ", LSN {}..{}, committed {} .. {} on the old primary and never received by the new one",
                f.lsn,
                l.lsn,
                crate::backup::format_time(Some(f.time_ms)),
                crate::backup::format_time(Some(l.time_ms))
            ),
            _ => String::new(),
        }
    ));
    for orphan in &orphans {
        out.push_str(&format!(
            "LSN {} (epoch {}, {})\n",
            orphan.lsn,
            orphan.epoch,
            crate::backup::format_time(Some(orphan.time_ms))
        ));
        for op in &orphan.ops {
            out.push_str(&format!("  {}: {} -> {}\n", shown(&op.key), shown_image(&op.before), shown_image(&op.after)));
        }
    }
    out.push_str("re-apply some with: hotpair orphans apply FILE --lsn N [--lsn M …] (or --all), --dry-run first\n");
    Ok(out)
}

/// Options of `orphans apply`.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub lsns: Vec<u64>,
    pub all: bool,
    pub dry_run: bool,
    pub force: bool,
}

/// What happens to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Every key already holds the after-image.
    AlreadyThere,
    Apply {
        commands: Vec<Vec<Bytes>>,
        notes: Vec<String>,
    },
    Conflict(Vec<String>),
}

/// `orphans apply`: returns the report; `Err` with exit 1 when refused, 3 when part-way.
pub fn apply(pair: &PairConfig, path: &Path, options: &ApplyOptions) -> Result<String, OrphansError> {
    let orphans = read(path)?;
    let chosen: Vec<&Orphan> = if options.all {
        orphans.iter().collect()
    } else {
        if options.lsns.is_empty() {
            return Err(OrphansError::Refused("choose transactions with --lsn N (repeatable) or --all".into()));
        }
        for lsn in &options.lsns {
            if !orphans.iter().any(|o| o.lsn == *lsn) {
                return Err(OrphansError::Refused(format!("LSN {lsn} is not in {}", path.display())));
            }
        }
        orphans.iter().filter(|o| options.lsns.contains(&o.lsn)).collect()
    };
    let (primary, address) = find_primary(pair)?;
    let timeout = pair.sync_timeout + Duration::from_secs(5);
    let mut client = DataClient::connect(address, timeout)
        .map_err(|e| OrphansError::Refused(format!("cannot reach {primary}'s data port {address}: {e}")))?;
    // The values as the chosen transactions leave them, key by key, for checking the next ones.
    let mut overlay: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    let mut plan = Vec::new();
    let now = crate::clock::now_ms();
    for orphan in &chosen {
        let mut current = Vec::new();
        for op in &orphan.ops {
            let value = match overlay.get(&op.key) {
                Some(value) => value.clone(),
                None => client
                    .get(&op.key)
                    .map_err(|e| OrphansError::Refused(format!("reading {}: {e}", shown(&op.key))))?,
            };
            current.push(value);
        }
        let verdict = judge(orphan, &current, options.force, now);
        if !matches!(verdict, Verdict::Conflict(_)) {
            for op in &orphan.ops {
                overlay.insert(op.key.clone(), data_of(&op.after).map(<[u8]>::to_vec));
            }
        }
        plan.push((*orphan, verdict));
    }
    let mut report = format!("{} transaction(s) from {}, through {primary} ({address}):\n", plan.len(), path.display());
    let conflicts: Vec<String> = plan
        .iter()
        .filter_map(|(orphan, verdict)| match verdict {
            Verdict::Conflict(reasons) => Some(format!("LSN {}: {}", orphan.lsn, reasons.join("; "))),
            _ => None,
        })
        .collect();
    for (orphan, verdict) in &plan {
        report.push_str(&describe(orphan, verdict, options.dry_run));
    }
    if !conflicts.is_empty() {
        return Err(OrphansError::Refused(format!(
            "{report}refused, nothing written: {} — the keys changed since; look at them, then re-apply with --force if the orphan's values should win",
            conflicts.join(" | ")
        )));
    }
    if options.dry_run {
        report.push_str("dry run: nothing written\n");
        return Ok(report);
    }
    let mut applied = 0;
    for (orphan, verdict) in &plan {
        let Verdict::Apply { commands, .. } = verdict else { continue };
        for command in commands {
            if let Err(reason) = client.command(command) {
                let done = if applied == 0 { "nothing before it" } else { "the ones before it" };
                let message = format!(
                    "{report}LSN {} failed: {reason}; {done} was applied — run the same `hotpair orphans apply` again to resume (applied transactions are skipped)",
                    orphan.lsn
                );
                return Err(if applied == 0 && commands.first() == Some(command) {
                    OrphansError::Refused(message)
                } else {
                    OrphansError::PartWay(message)
                });
            }
        }
        applied += 1;
    }
    report.push_str(&format!("applied {applied} transaction(s) as new writes on {primary}\n"));
    Ok(report)
}

/// Compares an orphan with the values its keys hold now (`current`, in op order).
fn judge(orphan: &Orphan, current: &[Option<Vec<u8>>], force: bool, now_ms: u64) -> Verdict {
    if orphan.ops.iter().zip(current).all(|(op, now)| data_of(&op.after) == now.as_deref()) {
        return Verdict::AlreadyThere;
    }
    let mut conflicts = Vec::new();
    for (op, now) in orphan.ops.iter().zip(current) {
        if matches!(op.after, Some(Image::Raw(_))) {
            conflicts.push(format!("{} holds a value that is not a plain string; re-apply it by hand", shown(&op.key)));
        } else if data_of(&op.before) != now.as_deref() && data_of(&op.after) != now.as_deref() && !force {
            conflicts.push(format!(
                "{} is now {}, but was {} before the orphan",
                shown(&op.key),
                now.as_deref().map_or("(absent)".into(), shown),
                shown_image(&op.before)
            ));
        }
    }
    if !conflicts.is_empty() {
        return Verdict::Conflict(conflicts);
    }
    let mut notes = Vec::new();
    let mut sets: Vec<Bytes> = vec![Bytes::from_static(b"MSET")];
    let mut expiring = Vec::new();
    let mut deletes: Vec<Bytes> = vec![Bytes::from_static(b"DEL")];
    for op in &orphan.ops {
        let key = Bytes::from(op.key.clone());
        match &op.after {
            Some(Image::Value { data, expires_at_ms: None }) => {
                sets.push(key);
                sets.push(Bytes::from(data.clone()));
            }
            Some(Image::Value { data, expires_at_ms: Some(at) }) if *at > now_ms => {
                let left = (at - now_ms).to_string();
                expiring.push(vec![
                    Bytes::from_static(b"SET"),
                    key,
                    Bytes::from(data.clone()),
                    Bytes::from_static(b"PX"),
                    Bytes::from(left),
                ]);
            }
            Some(Image::Value { expires_at_ms: Some(at), .. }) => {
                notes.push(format!(
                    "{} expired at {}: not re-applied",
                    shown(&op.key),
                    crate::backup::format_time(Some(*at))
                ));
            }
            Some(Image::Raw(_)) => {}
            None => deletes.push(key),
        }
    }
    let mut commands = Vec::new();
    if sets.len() > 1 {
        commands.push(sets);
    }
    commands.extend(expiring);
    if deletes.len() > 1 {
        commands.push(deletes);
    }
    if commands.len() > 1 {
        notes.push(format!("applied in {} commands, not atomically", commands.len()));
    }
    Verdict::Apply { commands, notes }
}

fn describe(orphan: &Orphan, verdict: &Verdict, dry_run: bool) -> String {
    let head =
        format!("LSN {} (epoch {}, {})", orphan.lsn, orphan.epoch, crate::backup::format_time(Some(orphan.time_ms)));
    match verdict {
        Verdict::AlreadyThere => format!("  {head}: already there, skipped\n"),
        Verdict::Conflict(reasons) => format!("  {head}: CONFLICT: {}\n", reasons.join("; ")),
        Verdict::Apply { commands, notes } => {
            let what: Vec<String> = commands
                .iter()
                .map(|c| c.iter().map(|b| shown(b)).collect::<Vec<_>>().join(" ").replace('"', ""))
                .collect();
            let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
            format!("  {head}: {} {}{notes}\n", if dry_run { "would send" } else { "sends" }, what.join(", then "))
        }
    }
}

/// The node that is primary and takes writes now, and its data address.
fn find_primary(pair: &PairConfig) -> Result<(String, std::net::SocketAddr), OrphansError> {
    let status =
        crate::admin::block_on(crate::admin::status(pair)).map_err(|e| OrphansError::Refused(e.to_string()))?;
    for node in &pair.nodes {
        let s = &status["nodes"][&node.name];
        if s["reachable"] == true && s["role"] == "primary" && s["writes"]["accepting"] != false {
            return Ok((node.name.clone(), node.data));
        }
    }
    Err(OrphansError::Refused(format!("no node is a primary taking writes now (`hotpair status`): {status}")))
}

/// A plain RESP connection to a data port, one command at a time.
struct DataClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    limits: crate::resp::Limits,
}

impl DataClient {
    fn connect(address: std::net::SocketAddr, timeout: Duration) -> std::io::Result<DataClient> {
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(DataClient { stream, buffer: Vec::new(), limits: crate::resp::Limits::default() })
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.command(&[Bytes::from_static(b"GET"), Bytes::from(key.to_vec())])? {
            Frame::Bulk(value) => Ok(value.map(|v| v.to_vec())),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// Sends one command; an error reply is `Err` with its text.
    fn command(&mut self, args: &[Bytes]) -> Result<Frame, String> {
        let mut out = Vec::new();
        frame::encode(&Frame::Array(Some(args.iter().map(|a| Frame::Bulk(Some(a.clone()))).collect())), &mut out);
        self.stream.write_all(&out).map_err(|e| e.to_string())?;
        loop {
            if let Some((reply, used)) = frame::parse(&self.buffer, &self.limits).map_err(|e| e.to_string())? {
                self.buffer.drain(..used);
                return match reply {
                    Frame::Error(text) => Err(text),
                    other => Ok(other),
                };
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("the node closed the connection".into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(ops: Vec<OrphanOp>) -> Orphan {
        Orphan { lsn: 9, epoch: 3, time_ms: 0, ops }
    }

    fn plain(text: &str) -> Option<Image> {
        Some(Image::Value { data: text.as_bytes().to_vec(), expires_at_ms: None })
    }

    #[test]
    fn a_key_changed_since_is_a_conflict_unless_forced_and_one_already_there_is_skipped() {
        let o = orphan(vec![OrphanOp { key: b"k".to_vec(), before: plain("1"), after: plain("2") }]);
        assert!(matches!(judge(&o, &[Some(b"1".to_vec())], false, 0), Verdict::Apply { .. }));
        assert_eq!(judge(&o, &[Some(b"2".to_vec())], false, 0), Verdict::AlreadyThere);
        assert!(matches!(judge(&o, &[Some(b"7".to_vec())], false, 0), Verdict::Conflict(_)));
        assert!(matches!(judge(&o, &[None], true, 0), Verdict::Apply { .. }));
    }

    #[test]
    fn sets_and_deletes_become_mset_and_del_and_expired_values_are_left_out() {
        let o = orphan(vec![
            OrphanOp { key: b"a".to_vec(), before: None, after: plain("x") },
            OrphanOp { key: b"b".to_vec(), before: plain("y"), after: None },
            OrphanOp {
                key: b"c".to_vec(),
                before: None,
                after: Some(Image::Value { data: b"z".to_vec(), expires_at_ms: Some(500) }),
            },
        ]);
        let Verdict::Apply { commands, notes } = judge(&o, &[None, Some(b"y".to_vec()), None], false, 1000) else {
            panic!("not applied")
        };
        assert_eq!(
            commands,
            vec![
                vec![Bytes::from("MSET"), Bytes::from("a"), Bytes::from("x")],
                vec![Bytes::from("DEL"), Bytes::from("b")],
            ]
        );
        assert!(
            notes.iter().any(|n| n.contains("expired")) && notes.iter().any(|n| n.contains("not atomically")),
            "{notes:?}"
        );
    }
}
