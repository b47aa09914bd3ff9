//! The drill's report: the verdict on each expectation, as JSON, a text table and an SVG timeline.
//!
//! ## Job
//! [`Report::build`] gathers what the runner measured (steps, workload counts, the oracle's
//! findings, outage windows, orphans, digests, role changes) and judges every expectation of the
//! playbook against it. [`text`] renders the table printed on stdout, [`svg`] the timeline
//! (write throughput and errors per 100 ms over time, a band per step, outage windows and role
//! changes); the [`Report`] itself serializes to the JSON of `--report FILE`.
//!
//! ## Invariants
//! - `passed` is true only if every step passed, every expectation held, and the oracle found no
//!   unexplained value; an expectation that could not be measured fails (its `measured` says why).
//! - Rendering is pure: the same report gives the same text and SVG. Text placed in the SVG is
//!   XML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use super::playbook::{Playbook, Target};
use super::workload::{self, Finished, OracleResult, OutageWindow};
use super::{RoleChange, StepRecord};

/// Width of one throughput bucket.
pub const BUCKET_MS: f64 = 100.0;

/// Everything [`Report::build`] needs.
pub struct Inputs<'a> {
    pub book: &'a Playbook,
    pub pair_dir: &'a Path,
    pub pair_file: &'a Path,
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub steps: Vec<StepRecord>,
    pub aborted_at: Option<usize>,
    pub finished: &'a [Finished],
    /// One per finished workload: the oracle's result or why it could not run.
    pub oracles: Vec<Result<OracleResult, String>>,
    pub read_from: Option<String>,
    pub orphaned: u64,
    pub orphaned_unknown: bool,
    pub digests: Digests,
    pub role_changes: Vec<RoleChange>,
    pub notes: Vec<String>,
    pub node_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Digests {
    /// `verify` (the last verify step's JSON) or `status` (both nodes' status at the end).
    pub source: String,
    pub lsn: Option<u64>,
    pub equal: Option<bool>,
    pub digests: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub runs: usize,
    /// How the clients reached the primary (`direct`, `sentinel`, `proxy`; several joined by
    /// `+` when runs differ): the outage windows are what such an application saw.
    pub connect: String,
    pub attempted: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    pub connect_errors: u64,
    /// Acknowledged writes missing at the end (keys whose last acknowledged value is gone).
    pub lost: Option<u64>,
    pub unexplained: Option<u64>,
    /// Keys holding a write whose acknowledgement never arrived (allowed).
    pub unacknowledged_stored: u64,
    pub keys_checked: u64,
    pub read_from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_examples: Vec<workload::LostWrite>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexplained_examples: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub check_errors: Vec<String>,
    pub outage_threshold_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    pub key: String,
    /// As written, e.g. `<= 0`, `<= 3s`, `true`.
    pub expected: String,
    pub measured: Value,
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub bucket_ms: f64,
    /// Acknowledged writes per bucket.
    pub acknowledged: Vec<u32>,
    /// Failed and unknown writes and failed connections per bucket.
    pub errors: Vec<u32>,
}

/// After a `kill` step: when the clients first saw another node acknowledge a write.
#[derive(Debug, Clone, Serialize)]
pub struct KillToWrite {
    pub step: usize,
    pub node: String,
    /// From the step's start (the SIGKILL) to that acknowledgement's arrival; `None`: none came.
    pub ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub playbook: String,
    pub pair_file: String,
    pub pair_dir: String,
    pub spawned: bool,
    pub sync: Option<String>,
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub passed: bool,
    pub aborted_at_step: Option<usize>,
    pub steps: Vec<StepRecord>,
    pub workload: Option<WorkloadReport>,
    pub outages: Vec<OutageWindow>,
    pub max_write_outage_ms: Option<f64>,
    pub orphaned: Option<u64>,
    pub digests: Digests,
    pub role_changes: Vec<RoleChange>,
    /// One per `kill` step while a workload ran.
    pub kill_to_first_write: Vec<KillToWrite>,
    pub expectations: Vec<Expectation>,
    pub notes: Vec<String>,
    pub nodes: Vec<String>,
    pub timeline: Timeline,
}

impl Report {
    pub fn build(inputs: Inputs<'_>) -> Report {
        let Inputs {
            book,
            pair_dir,
            pair_file,
            started_unix_ms,
            duration_ms,
            steps,
            aborted_at,
            finished,
            oracles,
            read_from,
            orphaned,
            orphaned_unknown,
            digests,
            role_changes,
            mut notes,
            node_names,
        } = inputs;

        let mut outages = Vec::new();
        for run in finished {
            outages.extend(workload::outages(run, run.spec.threshold()));
        }
        outages.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        let max_outage = (!finished.is_empty()).then(|| outages.iter().map(OutageWindow::ms).fold(0.0, f64::max));

        let workload = (!finished.is_empty()).then(|| {
            let mut connects: Vec<&str> = Vec::new();
            for run in finished {
                if !connects.contains(&run.spec.connect.name()) {
                    connects.push(run.spec.connect.name());
                }
            }
            let mut w = WorkloadReport {
                runs: finished.len(),
                connect: connects.join("+"),
                attempted: 0,
                acknowledged: 0,
                failed: 0,
                unknown: 0,
                connect_errors: 0,
                lost: Some(0),
                unexplained: Some(0),
                unacknowledged_stored: 0,
                keys_checked: 0,
                read_from: read_from.clone(),
                lost_examples: Vec::new(),
                unexplained_examples: Vec::new(),
                error_samples: Vec::new(),
                check_errors: Vec::new(),
                outage_threshold_ms: finished
                    .iter()
                    .map(|f| f.spec.threshold().as_secs_f64() * 1000.0)
                    .fold(0.0, f64::max),
            };
            for run in finished {
                let c = workload::counts(run);
                w.attempted += c.attempted;
                w.acknowledged += c.acknowledged;
                w.failed += c.failed;
                w.unknown += c.unknown;
                w.connect_errors += c.connect_errors;
                for sample in workload::error_samples(run) {
                    if !w.error_samples.contains(&sample) && w.error_samples.len() < 10 {
                        w.error_samples.push(sample);
                    }
                }
            }
            for oracle in &oracles {
                match oracle {
                    Ok(o) => {
                        w.lost = w.lost.map(|l| l + o.lost);
                        w.unexplained = w.unexplained.map(|u| u + o.unexplained);
                        w.unacknowledged_stored += o.unacknowledged_stored;
                        w.keys_checked += o.keys_checked;
                        w.lost_examples.extend(o.lost_examples.iter().cloned());
                        w.unexplained_examples.extend(o.unexplained_examples.iter().cloned());
                    }
                    Err(e) => {
                        w.lost = None;
                        w.unexplained = None;
                        w.check_errors.push(e.clone());
                    }
                }
            }
            w
        });
        let orphaned_measured = (!orphaned_unknown).then_some(orphaned);
        if orphaned_unknown {
            notes.push("a rejoin did not report `details.orphaned`: orphans unknown".into());
        }

        let mut expectations = Vec::new();
        let not_measured = |why: &str| json!(format!("not measured: {why}"));
        let e = &book.expect;
        if let Some(max) = e.lost_acknowledged {
            let (measured, pass) = match workload.as_ref().map(|w| (w.lost, &w.check_errors)) {
                None => (not_measured("no workload ran"), false),
                Some((None, errors)) => (not_measured(&errors.join("; ")), false),
                Some((Some(lost), _)) => (json!(lost), lost <= max),
            };
            expectations.push(verdict("lost_acknowledged", format!("<= {max}"), measured, pass));
        }
        if let Some(max) = e.max_write_outage {
            let max_ms = max.as_secs_f64() * 1000.0;
            let (measured, pass) = match max_outage {
                None => (not_measured("no workload ran"), false),
                Some(ms) => (json!(format!("{ms:.0}ms")), ms <= max_ms),
            };
            expectations.push(verdict(
                "max_write_outage",
                format!("<= {}", humantime::format_duration(max)),
                measured,
                pass,
            ));
        }
        if let Some(max) = e.max_orphaned {
            let (measured, pass) = match orphaned_measured {
                None => (not_measured("a rejoin did not report how many transactions it orphaned"), false),
                Some(n) => (json!(n), n <= max),
            };
            expectations.push(verdict("max_orphaned", format!("<= {max}"), measured, pass));
        }
        if let Some(want) = e.digests_equal {
            let (measured, pass) = match digests.equal {
                None => (not_measured(digests.note.as_deref().unwrap_or("no digests to compare")), false),
                Some(equal) => (json!(equal), equal == want),
            };
            expectations.push(verdict("digests_equal", want.to_string(), measured, pass));
        }
        if let Some(min) = e.min_acknowledged {
            let (measured, pass) = match &workload {
                None => (not_measured("no workload ran"), false),
                Some(w) => (json!(w.acknowledged), w.acknowledged >= min),
            };
            expectations.push(verdict("min_acknowledged", format!(">= {min}"), measured, pass));
        }
        if let Some(max) = e.max_failed_writes {
            let (measured, pass) = match &workload {
                None => (not_measured("no workload ran"), false),
                Some(w) => (json!(w.failed + w.unknown), w.failed + w.unknown <= max),
            };
            expectations.push(verdict("max_failed_writes", format!("<= {max}"), measured, pass));
        }
        if let Some(want) = e.lost_reported {
            let (measured, pass) = match (workload.as_ref().and_then(|w| w.lost), orphaned_measured) {
                (None, _) => (not_measured("no lost-write count (no workload, or the keys could not be read)"), false),
                (Some(_), None) => (not_measured("orphans unknown"), false),
                (Some(lost), Some(orphaned)) => {
                    (json!(format!("{lost} lost, {orphaned} orphaned")), (lost <= orphaned) == want)
                }
            };
            expectations.push(verdict("lost_reported", format!("{want} (lost <= orphaned)"), measured, pass));
        }
        if let Some(want) = e.single_writer {
            let epochs: Vec<u64> = role_changes.iter().filter_map(|c| c.epoch).collect();
            let epoch_changes = match (epochs.iter().min(), epochs.iter().max()) {
                (Some(lo), Some(hi)) => hi - lo,
                _ => 0,
            };
            let (handoffs, acks) = workload::writer_handoffs(finished);
            let (measured, pass) = if acks == 0 {
                (not_measured("no write was acknowledged by a known node"), false)
            } else {
                (
                    json!(format!("{handoffs} writer handoff(s), {epoch_changes} epoch change(s)")),
                    (handoffs <= epoch_changes) == want,
                )
            };
            expectations.push(verdict("single_writer", format!("{want} (handoffs <= epoch changes)"), measured, pass));
        }
        if let Some(max) = e.max_epoch_changes {
            let epochs: Vec<u64> = role_changes.iter().filter_map(|c| c.epoch).collect();
            let (measured, pass) = match (epochs.iter().min(), epochs.iter().max()) {
                (Some(lo), Some(hi)) => (json!(hi - lo), hi - lo <= max),
                _ => (not_measured("no node's epoch was seen"), false),
            };
            expectations.push(verdict("max_epoch_changes", format!("<= {max}"), measured, pass));
        }
        // Implicit: the oracle must explain every value it read back.
        if let Some(w) = &workload {
            if let Some(n) = w.unexplained.filter(|n| *n > 0) {
                expectations.push(verdict("values_explained (implicit)", "0 unexplained".into(), json!(n), false));
            }
        }

        let kill_to_first_write = steps
            .iter()
            .filter(|s| s.verb == "kill" && s.result == "passed")
            .filter_map(|s| {
                let node = s.params.strip_prefix("node=")?.to_string();
                let index = u8::try_from(node_names.iter().position(|n| *n == node)?).ok()?;
                let ran = finished.iter().any(|f| f.started_ms <= s.start_ms && f.stopped_ms >= s.end_ms);
                ran.then(|| KillToWrite {
                    step: s.number,
                    ms: workload::first_ack_elsewhere(finished, index, s.start_ms).map(|t| t - s.start_ms),
                    node,
                })
            })
            .collect();
        let timeline = timeline(finished, duration_ms);
        let passed = aborted_at.is_none()
            && steps.iter().all(|s| s.result == "passed")
            && expectations.iter().all(|e| e.verdict == "PASS");
        Report {
            name: book.name.clone(),
            playbook: book.path.display().to_string(),
            pair_file: pair_file.display().to_string(),
            pair_dir: pair_dir.display().to_string(),
            spawned: matches!(book.target, Target::Spawn(_)),
            sync: match &book.target {
                Target::Spawn(s) => Some(s.sync.name().to_string()),
                Target::Attach { .. } => None,
            },
            started_unix_ms,
            duration_ms,
            passed,
            aborted_at_step: aborted_at,
            steps,
            workload,
            outages,
            max_write_outage_ms: max_outage,
            orphaned: orphaned_measured,
            digests,
            role_changes,
            kill_to_first_write,
            expectations,
            notes,
            nodes: node_names,
            timeline,
        }
    }
}

fn verdict(key: &str, expected: String, measured: Value, pass: bool) -> Expectation {
    Expectation { key: key.into(), expected, measured, verdict: if pass { "PASS" } else { "FAIL" } }
}

fn timeline(finished: &[Finished], duration_ms: f64) -> Timeline {
    let buckets = (duration_ms / BUCKET_MS).ceil().max(1.0) as usize;
    let mut acknowledged = vec![0u32; buckets];
    let mut errors = vec![0u32; buckets];
    let index = |ms: f64| ((ms / BUCKET_MS).max(0.0) as usize).min(buckets - 1);
    for run in finished {
        for log in &run.clients {
            for a in &log.attempts {
                let slot = index(a.end_ms);
                match a.outcome {
                    workload::Outcome::Acknowledged => acknowledged[slot] += 1,
                    _ => errors[slot] += 1,
                }
            }
            for &t in &log.connect_errors {
                errors[index(t)] += 1;
            }
        }
    }
    Timeline { bucket_ms: BUCKET_MS, acknowledged, errors }
}

fn seconds(ms: f64) -> String {
    format!("{:.2}s", ms / 1000.0)
}

/// The table printed on stdout.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n=== drill {:?}: {} ===", r.name, if r.passed { "PASS" } else { "FAIL" });
    let _ = writeln!(
        out,
        "pair {} ({}{})",
        r.pair_file,
        if r.spawned { "spawned" } else { "attached" },
        r.sync.as_ref().map(|s| format!(", sync {s}")).unwrap_or_default()
    );
    let _ = writeln!(out, "\n{:>4}  {:<15} {:>9} {:>10}  {:<7} summary", "step", "verb", "start", "took", "result");
    for s in &r.steps {
        let _ = writeln!(
            out,
            "{:>4}  {:<15} {:>9} {:>8.0}ms  {:<7} {}{}",
            s.number,
            s.verb,
            seconds(s.start_ms),
            s.end_ms - s.start_ms,
            s.result,
            if s.params.is_empty() { String::new() } else { format!("[{}] ", s.params) },
            s.summary
        );
        for p in &s.phases {
            let _ = writeln!(out, "{:>31} {:<22} {:>9.1}ms", "phase", p.name, p.ms);
        }
    }
    match &r.workload {
        None => out.push_str("\nworkload: none ran\n"),
        Some(w) => {
            let show = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "\nworkload (connecting {}): {} writes attempted: {} acknowledged, {} failed, {} unknown; {} failed connections",
                w.connect, w.attempted, w.acknowledged, w.failed, w.unknown, w.connect_errors
            );
            let _ = writeln!(
                out,
                "oracle: {} keys read back from {}: {} LOST acknowledged, {} unexplained, {} hold an unacknowledged write",
                w.keys_checked,
                w.read_from.as_deref().unwrap_or("no node"),
                show(w.lost),
                show(w.unexplained),
                w.unacknowledged_stored
            );
            for lost in w.lost_examples.iter().take(5) {
                let _ = writeln!(
                    out,
                    "  lost: {} (last acknowledged s{}, stored {})",
                    lost.key,
                    lost.last_acknowledged_seq,
                    lost.stored_seq.map_or_else(|| "nothing".into(), |s| format!("s{s}"))
                );
            }
            for e in w.unexplained_examples.iter().take(5) {
                let _ = writeln!(out, "  unexplained: {e}");
            }
            for e in &w.check_errors {
                let _ = writeln!(out, "  oracle could not run: {e}");
            }
            for e in w.error_samples.iter().take(5) {
                let _ = writeln!(out, "  error reply seen: {e}");
            }
            let _ = writeln!(out, "outage windows (no acknowledgement for over {:.0} ms):", w.outage_threshold_ms);
            if r.outages.is_empty() {
                out.push_str("  none\n");
            }
            for o in &r.outages {
                let _ = writeln!(
                    out,
                    "  {} -> {}  {:.0} ms{}",
                    seconds(o.start_ms),
                    seconds(o.end_ms),
                    o.ms(),
                    if o.open_at_stop { " (still open when the workload stopped)" } else { "" }
                );
            }
        }
    }
    let _ =
        writeln!(out, "orphaned transactions: {}", r.orphaned.map_or_else(|| "unknown".to_string(), |n| n.to_string()));
    let d = &r.digests;
    let _ = writeln!(
        out,
        "digests ({}{}): {} -> {}{}",
        d.source,
        d.lsn.map(|l| format!(" at LSN {l}")).unwrap_or_default(),
        if d.digests.is_empty() {
            "none".to_string()
        } else {
            d.digests.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(" ")
        },
        match d.equal {
            Some(true) => "equal",
            Some(false) => "DIFFERENT",
            None => "not comparable",
        },
        d.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    for k in &r.kill_to_first_write {
        let _ = writeln!(
            out,
            "kill of {} (step {}): first write acknowledged elsewhere {}",
            k.node,
            k.step,
            k.ms.map_or_else(|| "never".to_string(), |ms| format!("{ms:.0} ms later"))
        );
    }
    if !r.role_changes.is_empty() {
        let changes: Vec<String> = r
            .role_changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} {}{}",
                    seconds(c.at_ms),
                    c.node,
                    c.role,
                    c.epoch.map(|e| format!("@{e}")).unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(out, "roles seen: {}", changes.join(", "));
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push_str("\nexpectations:\n");
    if r.expectations.is_empty() {
        out.push_str("  none given\n");
    }
    for e in &r.expectations {
        let measured = e.measured.as_str().map_or_else(|| e.measured.to_string(), str::to_string);
        let _ = writeln!(out, "  {:<28} expected {:<22} measured {:<24} {}", e.key, e.expected, measured, e.verdict);
    }
    if let Some(step) = r.aborted_at_step {
        let _ = writeln!(out, "  step {step} failed, so the drill fails whatever the expectations say");
    }
    let _ = writeln!(out, "verdict: {}", if r.passed { "PASS" } else { "FAIL" });
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The timeline as a standalone SVG document.
pub fn svg(r: &Report) -> String {
    const W: f64 = 1100.0;
    const H: f64 = 380.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 70.0;
    const BOTTOM: f64 = 60.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let total = r.duration_ms.max(1.0);
    let x = |ms: f64| LEFT + (ms.clamp(0.0, total) / total) * pw;
    let per_second = 1000.0 / r.timeline.bucket_ms;
    let peak = r.timeline.acknowledged.iter().chain(r.timeline.errors.iter()).copied().max().unwrap_or(0).max(1) as f64
        * per_second;
    let y = |rate: f64| TOP + ph - (rate / peak) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{} — {}</text>"#,
        escape(&r.name),
        if r.passed { "PASS" } else { "FAIL" }
    );
    // Step bands, labels staggered over three rows so that short steps stay readable.
    for (i, step) in r.steps.iter().enumerate() {
        if step.result == "skipped" {
            continue;
        }
        let (x0, x1) = (x(step.start_ms), x(step.end_ms));
        let fill = match (step.result, i % 2) {
            ("failed", _) => "#f5b7b1",
            (_, 0) => "#dce6f2",
            _ => "#eef1f5",
        };
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{fill}" opacity="0.8"><title>step {}: {} {} ({:.0} ms): {}</title></rect>"#,
            (x1 - x0).max(1.5),
            step.number,
            escape(step.verb),
            escape(&step.params),
            step.end_ms - step.start_ms,
            escape(&step.summary)
        );
        let row = (i % 3) as f64;
        let _ = writeln!(
            s,
            r##"<text x="{x0:.1}" y="{:.1}" fill="#34495e">{}</text><line x1="{x0:.1}" y1="{:.1}" x2="{x0:.1}" y2="{TOP}" stroke="#95a5a6" stroke-width="0.5"/>"##,
            TOP - 36.0 + row * 12.0,
            escape(step.verb),
            TOP - 33.0 + row * 12.0
        );
    }
    // Outage windows: a red strip along the bottom of the plot.
    for o in &r.outages {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#c0392b"><title>outage {:.0} ms</title></rect>"##,
            x(o.start_ms),
            TOP + ph - 6.0,
            (x(o.end_ms) - x(o.start_ms)).max(1.0),
            o.ms()
        );
    }
    // Errors per bucket (red bars) and acknowledgements per second (blue line).
    let bucket_w = r.timeline.bucket_ms / total * pw;
    for (i, &n) in r.timeline.errors.iter().enumerate() {
        if n > 0 {
            let rate = f64::from(n) * per_second;
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#e74c3c" opacity="0.8"/>"##,
                x(i as f64 * r.timeline.bucket_ms),
                y(rate).min(TOP + ph - 1.0),
                bucket_w.max(1.0),
                (TOP + ph - y(rate)).max(1.0)
            );
        }
    }
    let points: Vec<String> = r
        .timeline
        .acknowledged
        .iter()
        .enumerate()
        .map(|(i, &n)| format!("{:.1},{:.1}", x((i as f64 + 0.5) * r.timeline.bucket_ms), y(f64::from(n) * per_second)))
        .collect();
    if !points.is_empty() {
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#2471a3" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    // Role changes: dashed vertical markers with the new state.
    for (i, c) in r.role_changes.iter().enumerate() {
        if c.at_ms <= 0.0 && c.after_step == 0 {
            continue; // The initial roles: shown in the legend line instead.
        }
        let cx = x(c.at_ms);
        let color = if c.role == "down" { "#7f8c8d" } else { "#8e44ad" };
        let _ = writeln!(
            s,
            r#"<line x1="{cx:.1}" y1="{TOP}" x2="{cx:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4,3"/><text x="{:.1}" y="{:.1}" fill="{color}">{} {}{}</text>"#,
            TOP + ph + 4.0,
            cx + 2.0,
            TOP + ph + 16.0 + (i % 2) as f64 * 11.0,
            escape(&c.node),
            escape(&c.role),
            c.epoch.map(|e| format!(" e{e}")).unwrap_or_default()
        );
    }
    // Axes.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let tick = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|t| total / 1000.0 / t <= 12.0)
        .unwrap_or(600.0);
    let mut t = 0.0;
    while t * 1000.0 <= total {
        let tx = x(t * 1000.0);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#333"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"##,
            TOP + ph,
            TOP + ph + 4.0,
            H - 14.0
        );
        t += tick;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}/s</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text>"##,
        LEFT - 4.0,
        TOP + 4.0,
        peak,
        LEFT - 4.0,
        TOP + ph
    );
    let initial: Vec<String> =
        r.role_changes.iter().filter(|c| c.after_step == 0).map(|c| format!("{} {}", c.node, c.role)).collect();
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="18" text-anchor="end" fill="#555"><tspan fill="#2471a3">— acknowledged writes/s</tspan>  <tspan fill="#e74c3c">▮ errors/s</tspan>  <tspan fill="#c0392b">▬ outage</tspan>  <tspan fill="#8e44ad">┆ role change</tspan>  start: {}</text>"##,
        W - RIGHT,
        escape(&initial.join(", "))
    );
    s.push_str("</svg>\n");
    s
}
