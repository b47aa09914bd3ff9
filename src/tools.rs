//! Offline journal tools behind `hotpair journal ls|dump|verify PATH`: they read a node's
//! journal directories and change nothing (a torn tail is reported, not cut).
//!
//! PATH may be a segment directory, a node's data directory (its `journal/local` and
//! `journal/remote` are taken), or one segment file's directory.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::journal::{self, JournalError, Lsn, Record, RecordBody, SegmentReport};

/// Journal directories under PATH, each with a label.
pub fn journal_dirs(path: &Path) -> Vec<(String, PathBuf)> {
    let local = path.join("journal").join("local");
    let remote = path.join("journal").join("remote");
    if local.is_dir() || remote.is_dir() {
        [("local", local), ("remote", remote)]
            .into_iter()
            .filter(|(_, dir)| dir.is_dir())
            .map(|(label, dir)| (label.to_string(), dir))
            .collect()
    } else {
        vec![(path.display().to_string(), path.to_path_buf())]
    }
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
        for entry in journal::read_dir_from(&dir, from)? {
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

/// `journal verify`: checks every segment (headers, CRCs, LSN continuity, full decode).
pub fn verify(path: &Path) -> Result<VerifyReport, JournalError> {
    let mut text = String::new();
    let mut journals = Vec::new();
    let mut damaged = false;
    for (label, dir) in journal_dirs(path) {
        let reports = journal::inspect(&dir)?;
        let mut records = 0u64;
        let mut problems: Vec<String> =
            reports.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.path.display()))).collect();
        if problems.is_empty() {
            match journal::read_dir_from(&dir, 0) {
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
        let first = reports.iter().find_map(|r| r.first_lsn);
        let last = reports.iter().rev().find_map(|r| r.last_lsn);
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
    text.push_str(if damaged { "verify: DAMAGED\n" } else { "verify: ok\n" });
    Ok(VerifyReport { text, json: json!({ "ok": !damaged, "journals": journals }), damaged })
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
