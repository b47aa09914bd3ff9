//! `hotpair orphans show|apply FILE`: what a rejoin set aside, and putting chosen parts of it
//! back.
//!
//! ## Job
//! A rejoin saves the old primary's orphaned transactions (committed there, never received by
//! the new primary) in `<node dir>/orphans/orphans-<first>-<last>-<op>.jsonl`, one transaction
//! per line, newest first (`node::primitives`, `save_orphans`; the format is in
//! docs/runbook.md, procedure 3): per key the value before and after, and the client commands
//! behind writes whose after-image does not say what was asked (an `INCRBY`, a `FLUSHALL`).
//! `show` prints them oldest first, readable. `apply` re-applies the chosen ones (`--lsn N`,
//! repeatable, or `--all`) as new writes through the current primary's data port, in their
//! original order, each transaction as one `MULTI`/`EXEC`:
//! - a key a client command wrote (`INCRBY key 5`, `HINCRBY key field 5`) gets that command
//!   again, as sent: the increment is added to what the key holds now (the point of saving it
//!   as sent);
//! - every other key gets its after-image (`SET … [PXAT]`, `DEL`, or the whole hash), after a
//!   check: a key whose data is no longer the orphan's before-image was changed since (by the new
//!   primary's clients), and the transaction is refused unless `--force`; a transaction whose
//!   keys already hold their after-images needs nothing;
//! - a `FLUSHALL` is never sent again by the tool (run it yourself if you mean it).
//!
//! `--dry-run` prints the plan and writes nothing.
//!
//! ## Invariants
//! - Every chosen transaction is checked before the first write: a refusal changes nothing
//!   (exit 1). The check runs against the data as the earlier chosen transactions will leave
//!   it, so two orphans that touched the same key in turn check out.
//! - Re-running is safe: each transaction applied is recorded (fsynced) in `FILE.applied` before
//!   the next is sent, and is skipped from then on, so an increment is never sent twice; after a
//!   failure part-way (exit 3) the same command finishes the job.
//!
//! ## Caveats
//! - Check and write are two steps: a client writing the same key between them wins or loses
//!   without the tool knowing. Stop the writers of those keys first if that matters.
//! - A hash key that an `HINCRBY` of the transaction wrote gets only the increment again; other
//!   changes to that hash in the same transaction are in its after-image (shown), not re-sent.
//! - The data port is reached in plain RESP without a password.
//! - A value that has expired since is not re-applied (said so); one that expires later is set
//!   with its absolute expiry time.

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

/// A key's data as the orphans file shows it (and as the data port reads it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    String(Vec<u8>),
    /// Field/value pairs, sorted by field (the order does not make two hashes different).
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
}

/// One value as the orphans file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Value {
        data: Data,
        expires_at_ms: Option<u64>,
    },
    /// Stored bytes that are not a value this build reads (`{"raw": …}`): shown, never re-applied.
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
    /// The client commands behind writes whose after-images do not say what was asked
    /// (increments, flushes), as sent.
    pub commands: Vec<Vec<Vec<u8>>>,
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
    let commands = match value.get("commands") {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => list
            .as_array()
            .ok_or("`commands` is not a list")?
            .iter()
            .map(|command| {
                command
                    .as_array()
                    .filter(|args| !args.is_empty())
                    .ok_or("a command is not a list of arguments")?
                    .iter()
                    .map(|arg| bytes_of(arg).ok_or("unreadable command argument"))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Orphan { lsn: number("lsn")?, epoch: number("epoch")?, time_ms: number("time_ms")?, ops, commands })
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
    let data = &value["data"];
    let data = match data.get("hash") {
        Some(fields) => {
            let mut pairs = fields
                .as_array()
                .ok_or("a hash value is not a list")?
                .iter()
                .map(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([field, value]) => Ok((
                        bytes_of(field).ok_or("unreadable hash field")?,
                        bytes_of(value).ok_or("unreadable hash value")?,
                    )),
                    _ => Err("a hash field is not a [field, value] pair"),
                })
                .collect::<Result<Vec<_>, _>>()?;
            pairs.sort();
            Data::Hash(pairs)
        }
        None => Data::String(bytes_of(data).ok_or("a value has no readable `data`")?),
    };
    Ok(Some(Image::Value { data, expires_at_ms: value["expires_at_ms"].as_u64() }))
}

/// The data of an image, for comparing with what a key holds now.
fn data_of(image: &Option<Image>) -> Option<Option<&Data>> {
    match image {
        Some(Image::Value { data, .. }) => Some(Some(data)),
        Some(Image::Raw(_)) => None,
        None => Some(None),
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

fn shown_data(data: &Data) -> String {
    match data {
        Data::String(bytes) => shown(bytes),
        Data::Hash(fields) => {
            let fields: Vec<String> = fields.iter().map(|(f, v)| format!("{}: {}", shown(f), shown(v))).collect();
            format!("hash {{{}}}", fields.join(", "))
        }
    }
}

fn shown_image(image: &Option<Image>) -> String {
    match image {
        None => "(absent)".into(),
        Some(Image::Value { data, expires_at_ms: None }) => shown_data(data),
        Some(Image::Value { data, expires_at_ms: Some(at) }) => {
            format!("{} expiring {}", shown_data(data), crate::admin::backup::format_time(Some(*at)))
        }
        Some(Image::Raw(bytes)) => format!("raw {}", shown(bytes)),
    }
}

fn shown_command(args: &[Vec<u8>]) -> String {
    args.iter().map(|a| shown(a).trim_matches('"').to_string()).collect::<Vec<_>>().join(" ")
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
                crate::admin::backup::format_time(Some(f.time_ms)),
                crate::admin::backup::format_time(Some(l.time_ms))
            ),
            _ => String::new(),
        }
    ));
    for orphan in &orphans {
        out.push_str(&format!(
            "LSN {} (epoch {}, {})\n",
            orphan.lsn,
            orphan.epoch,
            crate::admin::backup::format_time(Some(orphan.time_ms))
        ));
        for op in &orphan.ops {
            out.push_str(&format!("  {}: {} -> {}\n", shown(&op.key), shown_image(&op.before), shown_image(&op.after)));
        }
        for command in &orphan.commands {
            out.push_str(&format!("  as sent: {}\n", shown_command(command)));
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
    /// Listed in the ledger next to the file: `orphans apply` applied it before.
    AppliedEarlier,
    /// Every key already holds the after-image (and no command is to be sent again).
    AlreadyThere,
    Apply {
        commands: Vec<Vec<Vec<u8>>>,
        notes: Vec<String>,
    },
    Conflict(Vec<String>),
}

/// The ledger of applied transactions next to an orphans file: one JSON line per transaction
/// `orphans apply` wrote, so that a re-run never sends an increment twice.
fn ledger_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".applied");
    file.with_file_name(name)
}

fn applied_earlier(file: &Path) -> Result<std::collections::HashSet<u64>, OrphansError> {
    let path = ledger_path(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["lsn"].as_u64()))
            .collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(source) => Err(OrphansError::Io { path, source }),
    }
}

fn note_applied(file: &Path, lsn: u64, primary: &str) -> Result<(), String> {
    let path = ledger_path(file);
    let line = serde_json::json!({ "lsn": lsn, "primary": primary, "at_ms": crate::clock::now_ms() });
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(out, "{line}").and_then(|()| out.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
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
    let earlier = applied_earlier(path)?;
    let (primary, address) = find_primary(pair)?;
    let timeout = pair.sync_timeout + Duration::from_secs(5);
    let mut client = DataClient::connect(address, timeout)
        .map_err(|e| OrphansError::Refused(format!("cannot reach {primary}'s data port {address}: {e}")))?;
    // The data as the chosen transactions leave it, key by key, for checking the next ones.
    let mut overlay: std::collections::HashMap<Vec<u8>, Option<Data>> = Default::default();
    let mut plan = Vec::new();
    let now = crate::clock::now_ms();
    for orphan in &chosen {
        if earlier.contains(&orphan.lsn) {
            plan.push((*orphan, Verdict::AppliedEarlier));
            continue;
        }
        let mut current = Vec::new();
        for op in &orphan.ops {
            let value = match overlay.get(&op.key) {
                Some(value) => value.clone(),
                None => client
                    .value(&op.key)
                    .map_err(|e| OrphansError::Refused(format!("reading {}: {e}", shown(&op.key))))?,
            };
            current.push(value);
        }
        let verdict = judge(orphan, &current, options.force, now);
        if !matches!(verdict, Verdict::Conflict(_)) {
            for op in &orphan.ops {
                if let Some(after) = data_of(&op.after) {
                    overlay.insert(op.key.clone(), after.cloned());
                }
            }
        }
        plan.push((*orphan, verdict));
    }
    let mut report = format!("{} transaction(s) from {}, through {primary} ({address}):\n", plan.len(), path.display());
    for (orphan, verdict) in &plan {
        report.push_str(&describe(orphan, verdict, options.dry_run));
    }
    let conflicts: Vec<String> = plan
        .iter()
        .filter_map(|(orphan, verdict)| match verdict {
            Verdict::Conflict(reasons) => Some(format!("LSN {}: {}", orphan.lsn, reasons.join("; "))),
            _ => None,
        })
        .collect();
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
        if let Err(reason) = client.transaction(commands).and_then(|()| note_applied(path, orphan.lsn, &primary)) {
            let message = format!(
                "{report}LSN {} failed: {reason}; {} — run the same `hotpair orphans apply` again to resume (what was applied is skipped)",
                orphan.lsn,
                if applied == 0 { "nothing was applied".to_string() } else { format!("{applied} transaction(s) before it were applied") }
            );
            return Err(if applied == 0 { OrphansError::Refused(message) } else { OrphansError::PartWay(message) });
        }
        applied += 1;
    }
    report.push_str(&format!("applied {applied} transaction(s) as new writes on {primary}\n"));
    Ok(report)
}

/// The key a client command writes (`INCRBY key …`, `HINCRBY key …`), if it names one.
fn command_key(command: &[Vec<u8>]) -> Option<&[u8]> {
    let name = command.first()?.to_ascii_uppercase();
    matches!(name.as_slice(), b"INCRBY" | b"INCRBYFLOAT" | b"HINCRBY" | b"HINCRBYFLOAT" | b"DECRBY" | b"INCR" | b"DECR")
        .then(|| command.get(1).map(Vec::as_slice))
        .flatten()
}

/// Compares an orphan with the data its keys hold now (`current`, in op order) and plans what
/// to send: the after-image of each key no command names, then the commands as sent (an
/// increment applies again on top of what the key holds now), in one MULTI/EXEC.
fn judge(orphan: &Orphan, current: &[Option<Data>], force: bool, now_ms: u64) -> Verdict {
    let mut conflicts = Vec::new();
    for command in &orphan.commands {
        if command_key(command).is_none() {
            conflicts.push(format!(
                "it ran `{}`, which this tool does not send again: run it yourself if you mean it",
                shown_command(command)
            ));
        }
    }
    let relative: Vec<&[u8]> = orphan.commands.iter().filter_map(|c| command_key(c)).collect();
    let absolute: Vec<(&OrphanOp, &Option<Data>)> =
        orphan.ops.iter().zip(current).filter(|(op, _)| !relative.contains(&op.key.as_slice())).collect();
    if conflicts.is_empty()
        && orphan.commands.is_empty()
        && absolute.iter().all(|(op, now)| data_of(&op.after) == Some(now.as_ref()))
    {
        return Verdict::AlreadyThere;
    }
    for (op, now) in &absolute {
        let Some(after) = data_of(&op.after) else {
            conflicts.push(format!("{} holds a value this build cannot read; re-apply it by hand", shown(&op.key)));
            continue;
        };
        let before = data_of(&op.before);
        if !force && before != Some(now.as_ref()) && after != now.as_ref() {
            conflicts.push(format!(
                "{} is now {}, but was {} before the orphan",
                shown(&op.key),
                now.as_ref().map_or("(absent)".into(), shown_data),
                shown_image(&op.before)
            ));
        }
    }
    if !conflicts.is_empty() {
        return Verdict::Conflict(conflicts);
    }
    let mut notes = Vec::new();
    let mut commands: Vec<Vec<Vec<u8>>> = Vec::new();
    for (op, _) in &absolute {
        let key = op.key.clone();
        match &op.after {
            None => commands.push(vec![b"DEL".to_vec(), key]),
            Some(Image::Value { expires_at_ms: Some(at), .. }) if *at <= now_ms => {
                notes.push(format!(
                    "{} expired at {}: not re-applied",
                    shown(&op.key),
                    crate::admin::backup::format_time(Some(*at))
                ));
            }
            Some(Image::Value { data: Data::String(value), expires_at_ms }) => {
                let mut set = vec![b"SET".to_vec(), key, value.clone()];
                if let Some(at) = expires_at_ms {
                    set.extend([b"PXAT".to_vec(), at.to_string().into_bytes()]);
                }
                commands.push(set);
            }
            Some(Image::Value { data: Data::Hash(fields), expires_at_ms }) => {
                commands.push(vec![b"DEL".to_vec(), key.clone()]);
                let mut hset = vec![b"HSET".to_vec(), key.clone()];
                for (field, value) in fields {
                    hset.extend([field.clone(), value.clone()]);
                }
                commands.push(hset);
                if let Some(at) = expires_at_ms {
                    commands.push(vec![b"PEXPIREAT".to_vec(), key, at.to_string().into_bytes()]);
                }
            }
            Some(Image::Raw(_)) => {}
        }
    }
    for command in &orphan.commands {
        notes.push(format!("`{}` is sent again: it applies to the value the key holds now", shown_command(command)));
        commands.push(command.clone());
    }
    if commands.len() > 1 {
        commands.insert(0, vec![b"MULTI".to_vec()]);
        commands.push(vec![b"EXEC".to_vec()]);
    }
    Verdict::Apply { commands, notes }
}

fn describe(orphan: &Orphan, verdict: &Verdict, dry_run: bool) -> String {
    let head = format!(
        "LSN {} (epoch {}, {})",
        orphan.lsn,
        orphan.epoch,
        crate::admin::backup::format_time(Some(orphan.time_ms))
    );
    match verdict {
        Verdict::AppliedEarlier => format!("  {head}: applied earlier by `orphans apply`, skipped\n"),
        Verdict::AlreadyThere => format!("  {head}: already there, skipped\n"),
        Verdict::Conflict(reasons) => format!("  {head}: CONFLICT: {}\n", reasons.join("; ")),
        Verdict::Apply { commands, notes } => {
            let what: Vec<String> = commands.iter().map(|c| shown_command(c)).collect();
            let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
            format!("  {head}: {} {}{notes}\n", if dry_run { "would send" } else { "sends" }, what.join(", "))
        }
    }
}

/// The node that is primary and takes writes now, and its data address.
fn find_primary(pair: &PairConfig) -> Result<(String, std::net::SocketAddr), OrphansError> {
    let status = crate::admin::client::block_on(crate::admin::client::status(pair))
        .map_err(|e| OrphansError::Refused(e.to_string()))?;
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

    /// What `key` holds now: a string or a hash (fields sorted), `None` when absent.
    fn value(&mut self, key: &[u8]) -> Result<Option<Data>, String> {
        let key = Bytes::from(key.to_vec());
        let kind = match self.command(&[Bytes::from_static(b"TYPE"), key.clone()])? {
            Frame::Simple(kind) => kind,
            other => return Err(format!("unexpected reply to TYPE: {other:?}")),
        };
        match kind.as_str() {
            "none" => Ok(None),
            "string" => match self.command(&[Bytes::from_static(b"GET"), key])? {
                Frame::Bulk(value) => Ok(value.map(|v| Data::String(v.to_vec()))),
                other => Err(format!("unexpected reply to GET: {other:?}")),
            },
            "hash" => match self.command(&[Bytes::from_static(b"HGETALL"), key])? {
                Frame::Array(Some(items)) => {
                    let mut fields = Vec::new();
                    for pair in items.chunks(2) {
                        match pair {
                            [Frame::Bulk(Some(field)), Frame::Bulk(Some(value))] => {
                                fields.push((field.to_vec(), value.to_vec()))
                            }
                            _ => return Err("unexpected reply to HGETALL".into()),
                        }
                    }
                    fields.sort();
                    Ok(Some(Data::Hash(fields)))
                }
                other => Err(format!("unexpected reply to HGETALL: {other:?}")),
            },
            other => Err(format!("the key is a {other}, which this tool does not compare")),
        }
    }

    /// Sends a transaction's commands (MULTI … EXEC when more than one); the first error, of a
    /// command or inside EXEC's replies, is `Err`.
    fn transaction(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<(), String> {
        for command in commands {
            let args: Vec<Bytes> = command.iter().map(|a| Bytes::from(a.clone())).collect();
            match self.command(&args)? {
                Frame::Array(Some(replies)) => {
                    if let Some(Frame::Error(text)) = replies.iter().find(|r| matches!(r, Frame::Error(_))) {
                        return Err(text.clone());
                    }
                }
                Frame::Array(None) => return Err("the transaction was aborted".into()),
                _ => {}
            }
        }
        Ok(())
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

    fn orphan(ops: Vec<OrphanOp>, commands: Vec<Vec<Vec<u8>>>) -> Orphan {
        Orphan { lsn: 9, epoch: 3, time_ms: 0, ops, commands }
    }

    fn plain(text: &str) -> Option<Image> {
        Some(Image::Value { data: Data::String(text.as_bytes().to_vec()), expires_at_ms: None })
    }

    fn now(text: &str) -> Option<Data> {
        Some(Data::String(text.as_bytes().to_vec()))
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_key_changed_since_is_a_conflict_unless_forced_and_one_already_there_is_skipped() {
        let o = orphan(vec![OrphanOp { key: b"k".to_vec(), before: plain("1"), after: plain("2") }], vec![]);
        assert!(matches!(judge(&o, &[now("1")], false, 0), Verdict::Apply { .. }));
        assert_eq!(judge(&o, &[now("2")], false, 0), Verdict::AlreadyThere);
        assert!(matches!(judge(&o, &[now("7")], false, 0), Verdict::Conflict(_)));
        assert!(matches!(judge(&o, &[None], true, 0), Verdict::Apply { .. }));
    }

    #[test]
    fn a_transaction_is_one_multi_exec_with_increments_sent_as_the_client_sent_them() {
        let hash = Some(Image::Value { data: Data::Hash(vec![(b"f".to_vec(), b"v".to_vec())]), expires_at_ms: None });
        let o = orphan(
            vec![
                OrphanOp { key: b"a".to_vec(), before: None, after: plain("x") },
                OrphanOp { key: b"n".to_vec(), before: plain("10"), after: plain("15") },
                OrphanOp { key: b"h".to_vec(), before: None, after: hash },
                OrphanOp {
                    key: b"c".to_vec(),
                    before: None,
                    after: Some(Image::Value { data: Data::String(b"z".to_vec()), expires_at_ms: Some(500) }),
                },
                OrphanOp { key: b"gone".to_vec(), before: plain("y"), after: None },
            ],
            vec![args(&["INCRBY", "n", "5"])],
        );
        // n moved on since (10 -> 12): an increment is no conflict, it is sent again.
        let current = [None, now("12"), None, None, now("y")];
        let Verdict::Apply { commands, notes } = judge(&o, &current, false, 1000) else { panic!("not applied") };
        assert_eq!(
            commands,
            vec![
                args(&["MULTI"]),
                args(&["SET", "a", "x"]),
                args(&["DEL", "h"]),
                args(&["HSET", "h", "f", "v"]),
                args(&["DEL", "gone"]),
                args(&["INCRBY", "n", "5"]),
                args(&["EXEC"]),
            ]
        );
        assert!(
            notes.iter().any(|n| n.contains("expired")) && notes.iter().any(|n| n.contains("sent again")),
            "{notes:?}"
        );
        // A flush is never sent again by the tool, forced or not.
        let flush =
            orphan(vec![OrphanOp { key: b"a".to_vec(), before: plain("x"), after: None }], vec![args(&["FLUSHALL"])]);
        assert!(matches!(judge(&flush, &[now("x")], true, 0), Verdict::Conflict(_)));
    }
}
