//! The metrics endpoint on a real pair: scraped with a plain HTTP/1.1 GET over a TCP socket, as
//! Prometheus does, and checked against what `hotpair status --json` says.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Options, Pair, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;

/// Writes made through the data port before scraping.
const WRITES: u64 = 40;
const ROLES: [&str; 5] = ["primary", "backup", "draining", "fenced", "rejoining"];

/// One HTTP answer: status code, header block (lower-cased), body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// A plain HTTP/1.1 request; the server closes the connection after answering.
fn http(address: SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect_timeout(&address, DEADLINE).expect("connect to the metrics port");
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    Answer { status, headers: head.to_ascii_lowercase(), body: body.to_string() }
}

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format's sample lines (label values here hold no `,` or escaped quotes).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value = if value == "+Inf" { f64::INFINITY } else { value.parse().expect("a number") };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line}"));
                    (key.to_string(), value.trim_matches('"').to_string())
                })
                .collect();
            Sample { name: name.to_string(), labels, value }
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include every one of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

fn scrape(pair: &Pair, node: &str) -> (String, Vec<Sample>) {
    let answer = http(pair.metrics_address(node), "GET", "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.headers.contains("content-type: text/plain; version=0.0.4"), "{}", answer.headers);
    let parsed = samples(&answer.body);
    (answer.body, parsed)
}

/// Every sample has `node="<node>"`, and every family a `# HELP` and a `# TYPE`.
fn assert_well_formed(node: &str, text: &str, samples: &[Sample]) {
    for sample in samples {
        assert_eq!(sample.labels.get("node").map(String::as_str), Some(node), "{sample:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample.name.strip_suffix(suffix).filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(&sample.name);
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {family}");
    }
}

/// Waits until the node's `hotpair_lsn` equals the `lsn` its status shows (read in between two
/// scrapes that agree, so that nothing committed meanwhile can make them match by accident).
fn wait_lsn_matches_status(pair: &Pair, node: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = value(&scrape(pair, node).1, "hotpair_lsn", &[]);
        let status = pair.node_status(node)["lsn"].as_u64().expect("status lsn");
        let after = value(&scrape(pair, node).1, "hotpair_lsn", &[]);
        if before == after && after == status as f64 {
            return status;
        }
        assert!(Instant::now() < deadline, "{node}: hotpair_lsn {before}/{after}, status lsn {status}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn scrapes_show_roles_positions_journals_and_commit_latencies() {
    let mut pair = Pair::start_with(SyncLevel::Durable, Options { metrics: true, ..Options::default() });
    let mut a = pair.redis(PRIMARY);
    for i in 0..WRITES {
        let _: () = redis::cmd("SET").arg(format!("key-{i}")).arg(i).query(&mut a).expect("durable write");
    }
    let caught_up = pair.wait_caught_up();

    for (node, role) in [(PRIMARY, "primary"), (BACKUP, "backup")] {
        let lsn = wait_lsn_matches_status(&pair, node);
        assert!(lsn >= caught_up, "{node}: {lsn} < {caught_up}");
        let (text, samples) = scrape(&pair, node);
        assert_well_formed(node, &text, &samples);
        for candidate in ROLES {
            let expected = if candidate == role { 1.0 } else { 0.0 };
            assert_eq!(value(&samples, "hotpair_role", &[("role", candidate)]), expected, "{node} {candidate}");
        }
        let status = pair.node_status(node);
        assert_eq!(value(&samples, "hotpair_epoch", &[]), status["epoch"].as_f64().unwrap(), "{node}");
        assert_eq!(value(&samples, "hotpair_peer_connected", &[]), 1.0, "{node}");
        let journal = if node == PRIMARY { "local" } else { "remote" };
        assert!(value(&samples, "hotpair_journal_bytes", &[("kind", journal)]) > 0.0, "{node} {journal}");
        assert!(value(&samples, "hotpair_journal_segments", &[("kind", journal)]) >= 1.0, "{node} {journal}");
        assert!(value(&samples, "hotpair_journal_last_lsn", &[("kind", journal)]) >= caught_up as f64, "{node}");
    }

    let (_, primary) = scrape(&pair, PRIMARY);
    let durable = [("sync", "durable")];
    let count = value(&primary, "hotpair_commit_seconds_count", &durable);
    assert!(count >= WRITES as f64, "{count} commits counted for {WRITES} writes");
    let inf = value(&primary, "hotpair_commit_seconds_bucket", &[("sync", "durable"), ("le", "+Inf")]);
    assert_eq!(inf, count, "the +Inf bucket is the count");
    assert!(value(&primary, "hotpair_commit_seconds_sum", &durable) > 0.0);
    assert_eq!(value(&primary, "hotpair_commit_seconds_count", &[("sync", "async")]), 0.0);
    assert_eq!(value(&primary, "hotpair_lag_records", &[]), 0.0);

    let (_, backup) = scrape(&pair, BACKUP);
    assert!(value(&backup, "hotpair_replication_sessions_total", &[]) >= 1.0);
    assert!(value(&backup, "hotpair_replication_connect_attempts_total", &[]) >= 1.0);
    assert_eq!(value(&backup, "hotpair_applied_lsn", &[]), caught_up as f64);

    let missing = http(pair.metrics_address(PRIMARY), "GET", "/nope");
    assert_eq!(missing.status, 404, "{}", missing.body);
    let posted = http(pair.metrics_address(PRIMARY), "POST", "/metrics");
    assert_eq!(posted.status, 405, "{}", posted.body);
}

#[test]
fn incidents_are_counted_by_kind_and_reconnects_show() {
    let options = Options { metrics: true, heartbeat: Some("100ms"), ..Options::default() };
    let mut pair = Pair::start_with(SyncLevel::Async, options);
    pair.hotpair_ok(&["replicate", "stop", PRIMARY]);
    let open = [("kind", "replication-stopped")];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, samples) = scrape(&pair, PRIMARY);
        let raised = samples.iter().any(|s| {
            s.name == "hotpair_incidents_raised_total"
                && s.labels.get("kind").map(String::as_str) == Some("replication-stopped")
        });
        if raised && value(&samples, "hotpair_incidents_open", &open) == 1.0 {
            assert_eq!(value(&samples, "hotpair_incidents_raised_total", &open), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "replication-stopped never showed as open");
        std::thread::sleep(POLL);
    }
    pair.hotpair_ok(&["replicate", "start", PRIMARY]);
    pair.wait_ready();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, samples) = scrape(&pair, PRIMARY);
        if value(&samples, "hotpair_incidents_open", &open) == 0.0 {
            assert_eq!(value(&samples, "hotpair_incidents_raised_total", &open), 1.0, "a counter never goes down");
            break;
        }
        assert!(Instant::now() < deadline, "replication-stopped never resolved");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The backup's session ended with `replicate stop` and came back: two sessions.
    let (_, backup) = scrape(&pair, BACKUP);
    assert!(value(&backup, "hotpair_replication_sessions_total", &[]) >= 2.0);
}
