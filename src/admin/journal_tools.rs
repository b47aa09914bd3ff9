//! Offline journal tools behind `hotpair journal ls|dump|verify PATH`: they read a node's
//! journal directories and change nothing (a torn tail is reported, not cut).
//!
//! PATH may be a segment directory, a node's data directory (its `journal/local` and
//! `journal/remote` are taken), or one segment file's directory.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::storage::journal::merged::{Merged, Source};
use crate::storage::journal::{self, JournalError, Lsn, Record, RecordBody, SegmentReport};

/// Journal directories under PATH, each with a label: a node's data directory gives its local
/// and remote journals, a backup directory (`hotpair backup`) its journal, anything else is
/// taken as one journal directory.
pub fn journal_dirs(path: &Path) -> Vec<(String, PathBuf)> {
    let local = path.join("journal").join("local");
    let remote = path.join("journal").join("remote");
    if local.is_dir() || remote.is_dir() {
        [("local", local), ("remote", remote)]
            .into_iter()
            .filter(|(_, dir)| dir.is_dir())
            .map(|(label, dir)| (label.to_string(), dir))
            .collect()
    } else if path.join(crate::admin::backup::MANIFEST_FILE).is_file() {
        vec![("backup".to_string(), path.join(crate::admin::backup::JOURNAL_DIR))]
    } else {
        vec![(path.display().to_string(), path.to_path_buf())]
    }
}

/// A point in time on the command line: RFC 3339 in UTC (`2026-12-05T10:31:02Z`, fractions of a
/// second allowed, `T` or a space, the `Z` optional) or `@` and milliseconds since the Unix
/// epoch (`@1796077316675`, what `journal dump` prints as `ts=`). Returns milliseconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Some(ms) = text.strip_prefix('@') {
        return ms.parse().map_err(|_| format!("{text:?}: after `@` give milliseconds since the Unix epoch"));
    }
    let bare = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00")).unwrap_or(text);
    let time = humantime::parse_rfc3339_weak(bare).map_err(|e| {
        format!("{text:?} is not a time ({e}); write it as 2026-12-05T10:31:02Z (UTC) or @<milliseconds since 1970>")
    })?;
    let since = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(since.as_millis() as u64)
}

/// Where a time falls in a history: the last record stamped at or before it (replay up to there
/// and stop before the first record stamped after it, as PostgreSQL's `recovery_target_time`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimePoint {
    pub time_ms: u64,
    /// The last record at or before the time, and its timestamp; `None` when the first record
    /// held is already after it.
    pub lsn: Option<Lsn>,
    pub lsn_time_ms: Option<u64>,
    /// The first record after the time, if any.
    pub next_lsn: Option<Lsn>,
    pub next_time_ms: Option<u64>,
    /// The first and last LSN the sources hold.
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
}

/// Reads `sources` as one history and finds `time_ms` in it. Timestamps are the primary's
/// clock: after a failover to a host whose clock is behind they may step back, and the first
/// record stamped after the time ends the search whatever follows.
pub fn find_time(sources: &[Source], time_ms: u64) -> Result<TimePoint, JournalError> {
    let mut point = TimePoint {
        time_ms,
        lsn: None,
        lsn_time_ms: None,
        next_lsn: None,
        next_time_ms: None,
        first_lsn: None,
        last_lsn: None,
    };
    for entry in Merged::open(sources, 0, Lsn::MAX)? {
        let record = entry?.entry.record;
        point.first_lsn.get_or_insert(record.lsn);
        point.last_lsn = Some(record.lsn);
        if point.next_lsn.is_none() {
            if record.timestamp_ms <= time_ms {
                point.lsn = Some(record.lsn);
                point.lsn_time_ms = Some(record.timestamp_ms);
            } else {
                point.next_lsn = Some(record.lsn);
                point.next_time_ms = Some(record.timestamp_ms);
            }
        }
    }
    Ok(point)
}

/// `journal find-time PATH TIME`: the text (or JSON) and whether a record was found.
pub fn find_time_report(path: &Path, time_ms: u64, as_json: bool) -> Result<(String, bool), JournalError> {
    let sources: Vec<Source> = journal_dirs(path).into_iter().map(|(label, dir)| Source::new(label, dir)).collect();
    let point = find_time(&sources, time_ms)?;
    let found = point.lsn.is_some();
    if as_json {
        return Ok((format!("{}\n", serde_json::to_string(&point).unwrap_or_default()), found));
    }
    let when = crate::admin::backup::format_time(Some(time_ms));
    let mut text = match (point.lsn, point.first_lsn) {
        (Some(lsn), _) => format!(
            "LSN {lsn} is the last record at or before {when} (stamped {})\n",
            crate::admin::backup::format_time(point.lsn_time_ms)
        ),
        (None, Some(first)) => {
            format!("no record at or before {when}: the journals begin at LSN {first}, stamped later\n")
        }
        (None, None) => "no records in these journals\n".to_string(),
    };
    match point.next_lsn {
        Some(next) => text.push_str(&format!(
            "  the next, LSN {next}, is stamped {}\n",
            crate::admin::backup::format_time(point.next_time_ms)
        )),
        None if found => text.push_str(&format!(
            "  it is the last record held (LSN {}); nothing after {when} is in these journals\n",
            opt(point.last_lsn)
        )),
        None => {}
    }
    Ok((text, found))
}

/// `journal ls`: one line (or JSON object) per segment.
pub fn ls(path: &Path, as_json: bool) -> Result<String, JournalError> {
    let mut out = String::new();
    let mut all = Vec::new();
    for (label, dir) in journal_dirs(path) {
        let reports = journal::inspect(&dir)?;
        if as_json {
            all.push(json!({ "journal": label, "dir": dir, "segments": reports }));
            continue;
        }
        out.push_str(&format!("{label} journal ({}):\n", dir.display()));
        out.push_str(&format!(
            "  {:<26} {:>6} {:>12} {:>12} {:>9} {:>12}  {}\n",
            "segment", "epoch", "first lsn", "last lsn", "records", "bytes", "state"
        ));
        if reports.is_empty() {
            out.push_str("  (no segments)\n");
        }
        for r in &reports {
            out.push_str(&format!(
                "  {:<26} {:>6} {:>12} {:>12} {:>9} {:>12}  {}\n",
                r.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                opt(r.epoch),
                opt(r.first_lsn),
                opt(r.last_lsn),
                r.records,
                r.bytes,
                state(r)
            ));
        }
    }
    if as_json {
        out = serde_json::to_string_pretty(&Value::Array(all)).unwrap_or_default();
        out.push('\n');
    }
    Ok(out)
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

fn state(report: &SegmentReport) -> String {
    match (&report.error, report.torn_tail_bytes) {
        (Some(error), _) => format!("DAMAGED: {error}"),
        (None, 0) => "ok".into(),
        (None, torn) => format!("ok, torn tail of {torn} bytes (cut at next open)"),
    }
}

/// `journal dump`: every record from `from` on, as text lines or JSON lines.
pub fn dump(path: &Path, from: Lsn, as_json: bool, out: &mut dyn std::io::Write) -> Result<u64, crate::Error> {
    let mut count = 0;
    for (label, dir) in journal_dirs(path) {
        if !as_json {
            writeln!(out, "# {label} journal ({})", dir.display())?;
        }
        // From the journal's own first record when `from` is before it: a journal that starts
        // past LSN 1 (its peer wrote the epochs before) is not missing anything.
        let first = journal::inspect(&dir)?.iter().find(|r| r.last_lsn.is_some()).and_then(|r| r.first_lsn);
        for entry in journal::read_dir_from(&dir, first.map_or(from, |first| from.max(first)))? {
            let entry = entry?;
            if as_json {
                let mut value = record_json(&entry.record);
                value["journal"] = json!(label);
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{}", record_text(&entry.record))?;
            }
            count += 1;
        }
    }
    Ok(count)
}

/// What `journal verify` found: per-segment reports and whole-record decoding.
pub struct VerifyReport {
    pub text: String,
    pub json: Value,
    pub damaged: bool,
}

/// `journal verify`: checks every segment (headers, CRCs, LSN continuity, full decode) of each
/// journal under PATH, then — when PATH holds more than one (a node's local and remote journals,
/// split by epoch) — reads them together as one history ([`journal::merged`]): no LSN missing
/// between the first and the last, no two journals contradicting each other. Records before the
/// first one held (trimmed, archived, or never there after a full copy) are not damage.
pub fn verify(path: &Path) -> Result<VerifyReport, JournalError> {
    let mut text = String::new();
    let mut journals = Vec::new();
    let mut damaged = false;
    let dirs = journal_dirs(path);
    for (label, dir) in &dirs {
        let reports = journal::inspect(dir)?;
        let mut problems: Vec<String> =
            reports.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.path.display()))).collect();
        let first = reports.iter().find(|r| r.last_lsn.is_some()).and_then(|r| r.first_lsn);
        let last = reports.iter().rev().find_map(|r| r.last_lsn);
        let mut records = 0u64;
        if problems.is_empty() {
            // From the journal's own first record: one that starts past LSN 1 (its peer wrote
            // the epochs before) is not missing anything.
            match journal::read_dir_from(dir, first.unwrap_or(Lsn::MAX)) {
                Ok(reader) => {
                    for entry in reader {
                        match entry {
                            Ok(_) => records += 1,
                            Err(err) => {
                                problems.push(err.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(err) => problems.push(err.to_string()),
            }
        }
        let torn: u64 = reports.iter().map(|r| r.torn_tail_bytes).sum();
        damaged |= !problems.is_empty();
        text.push_str(&format!(
            "{label} journal ({}): {} segments, {records} records, LSN {}..{}{}\n",
            dir.display(),
            reports.len(),
            opt(first),
            opt(last),
            if torn > 0 { format!(", torn tail of {torn} bytes (cut at next open)") } else { String::new() }
        ));
        for problem in &problems {
            text.push_str(&format!("  DAMAGED: {problem}\n"));
        }
        journals.push(json!({
            "journal": label, "dir": dir, "segments": reports.len(), "records": records,
            "first_lsn": first, "last_lsn": last, "torn_tail_bytes": torn, "problems": problems,
        }));
    }
    let mut report = json!({ "ok": true, "journals": journals });
    if dirs.len() > 1 && !damaged {
        let history = verify_history(&dirs);
        damaged |= history.problem.is_some();
        text.push_str(&history.text);
        report["history"] = history.json;
    }
    report["ok"] = json!(!damaged);
    text.push_str(if damaged { "verify: DAMAGED\n" } else { "verify: ok\n" });
    Ok(VerifyReport { text, json: report, damaged })
}

/// The journals of one node read together as one history.
struct HistoryCheck {
    text: String,
    json: Value,
    problem: Option<String>,
}

fn verify_history(dirs: &[(String, PathBuf)]) -> HistoryCheck {
    let sources: Vec<Source> = dirs.iter().map(|(label, dir)| Source::new(label.clone(), dir.clone())).collect();
    let mut first = None;
    let mut last = None;
    let mut records = 0u64;
    let mut problem = None;
    let merged = Merged::open(&sources, 0, Lsn::MAX);
    let (taken, superseded, epochs) = match merged {
        Ok(mut merged) => {
            for entry in merged.by_ref() {
                match entry {
                    Ok(entry) => {
                        first.get_or_insert(entry.entry.record.lsn);
                        last = Some(entry.entry.record.lsn);
                        records += 1;
                    }
                    Err(err) => {
                        problem = Some(err.to_string());
                        break;
                    }
                }
            }
            (merged.taken.clone(), merged.superseded, merged.epochs.clone())
        }
        Err(err) => {
            problem = Some(err.to_string());
            (vec![0; sources.len()], 0, Vec::new())
        }
    };
    let from: Vec<String> =
        sources.iter().zip(&taken).map(|(source, count)| format!("{count} from {}", source.label)).collect();
    let mut text = format!(
        "one history: LSN {}..{}, {records} records ({}), without a gap{}\n",
        opt(first),
        opt(last),
        from.join(", "),
        if problem.is_some() { " up to the problem below" } else { "" }
    );
    if !epochs.is_empty() {
        let list: Vec<String> = epochs
            .iter()
            .map(|e| match &e.primary {
                Some(primary) => format!("{} from LSN {} ({primary})", e.epoch, e.first_lsn),
                None => format!("{} from LSN {}", e.epoch, e.first_lsn),
            })
            .collect();
        text.push_str(&format!("  epochs: {}\n", list.join(", ")));
    }
    if first.is_some_and(|first| first > 1) {
        text.push_str(&format!(
            "  records before LSN {} are not here (trimmed, archived, or this node was built by a full copy or a restore): not damage\n",
            opt(first)
        ));
    }
    if superseded > 0 {
        text.push_str(&format!(
            "  {superseded} record(s) of an older epoch were replaced by a newer epoch's (an orphaned tail not yet rejoined: `hotpair rejoin` saves and removes it)\n"
        ));
    }
    if let Some(problem) = &problem {
        text.push_str(&format!("  DAMAGED: {problem}\n"));
    }
    let json = json!({
        "first_lsn": first, "last_lsn": last, "records": records, "superseded": superseded,
        "epochs": epochs, "problems": problem.iter().collect::<Vec<_>>(),
    });
    HistoryCheck { text, json, problem }
}

/// A record as JSON: bytes that are UTF-8 print as strings, others as `{"hex": "…"}`.
pub fn record_json(record: &Record) -> Value {
    let mut value = json!({
        "lsn": record.lsn,
        "epoch": record.epoch,
        "timestamp_ms": record.timestamp_ms,
        "kind": record.body.kind_name(),
        "digest_after": record.digest_after.to_hex(),
    });
    match &record.body {
        RecordBody::Txn { ops, commands } => {
            if !commands.is_empty() {
                value["commands"] =
                    commands.iter().map(|args| args.iter().map(|a| bytes_json(a)).collect::<Vec<_>>()).collect();
            }
            value["ops"] = ops
                .iter()
                .map(|op| json!({ "key": bytes_json(&op.key), "before": op.before.as_deref().map(bytes_json), "after": op.after.as_deref().map(bytes_json) }))
                .collect();
        }
        RecordBody::EpochStart { history } => value["history"] = json!(history),
        RecordBody::Canary { sequence } => value["sequence"] = json!(sequence),
        RecordBody::Checkpoint { key_count } => value["key_count"] = json!(key_count),
    }
    value
}

fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

fn record_text(record: &Record) -> String {
    let head = format!(
        "lsn={} epoch={} ts={} {} digest={}",
        record.lsn,
        record.epoch,
        record.timestamp_ms,
        record.body.kind_name(),
        record.digest_after
    );
    let detail = match &record.body {
        RecordBody::Txn { ops, commands } => {
            let ops = ops
                .iter()
                .map(|op| match &op.after {
                    Some(v) => format!("set {} ({} bytes)", printable(&op.key), v.len()),
                    None => format!("del {}", printable(&op.key)),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let commands = commands
                .iter()
                .map(|args| args.iter().map(|a| printable(a)).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>();
            if commands.is_empty() {
                ops
            } else {
                format!("{ops} [{}]", commands.join("; "))
            }
        }
        RecordBody::EpochStart { history } => history
            .iter()
            .map(|h| format!("epoch {} from lsn {} on {}", h.epoch, h.first_lsn, h.primary))
            .collect::<Vec<_>>()
            .join("; "),
        RecordBody::Canary { sequence } => format!("sequence {sequence}"),
        RecordBody::Checkpoint { key_count } => format!("{key_count} keys"),
    };
    format!("{head} {detail}")
}

fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
