//! Transcript tests of the pair engine (toydb's goldenscript habit): each file in
//! `tests/transcripts/` is a scenario — events given to the engines of nodes `a` and `b` — with
//! the effects each engine emitted written under the event that caused them. The test replays
//! every file and fails on any difference; review reads the diff.
//!
//! After an intended change, rewrite them with `UPDATE_TRANSCRIPTS=1 cargo test --release --test
//! transcripts` and read `git diff tests/transcripts/`.
//!
//! ## Syntax
//! - `# …` and blank lines are kept as they are.
//! - `> NODE EVENT key=value … flag …` gives NODE's engine an event (see [`parse_event`]);
//!   `> NODE state` prints the engine's state.
//! - Lines indented by two spaces are output, rewritten on every run.
//! - Histories are `[1@1:a 2@41:b]` (epoch @ first LSN : primary); ids are small numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hotpair::engine::{
    render, Engine, Event, Hello, Identity, Outcome, Persisted, PrimaryView, Primitive, Promotion, Recovered,
    RejoinRequest, Rejoined, TailMatch, WitnessEpoch, WitnessPolicy, WitnessReport, PROTOCOL_VERSION,
};
use hotpair::storage::digest::Digest;
use hotpair::storage::journal::HistoryEntry;
use hotpair::storage::meta::Role;
use uuid::Uuid;

const UPDATE_ENV: &str = "UPDATE_TRANSCRIPTS";
const MIN_TRANSCRIPTS: usize = 12;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts")
}

#[test]
fn transcripts() {
    let update = std::env::var_os(UPDATE_ENV).is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/transcripts")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= MIN_TRANSCRIPTS, "only {} transcripts in {}", files.len(), dir().display());
    let mut failures = Vec::new();
    for file in &files {
        let written = std::fs::read_to_string(file).expect("read transcript");
        let replayed = match replay(&written) {
            Ok(text) => text,
            Err(err) => {
                failures.push(format!("{}: {err}", file.display()));
                continue;
            }
        };
        if replayed == written {
            continue;
        }
        if update {
            std::fs::write(file, &replayed).expect("rewrite transcript");
        } else {
            failures.push(format!("{}: differs\n{}", file.display(), first_difference(&written, &replayed)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} transcript(s) failed (rewrite with {UPDATE_ENV}=1 after an intended change):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    println!("replayed {} transcripts", files.len());
}

fn first_difference(written: &str, replayed: &str) -> String {
    let (w, r): (Vec<&str>, Vec<&str>) = (written.lines().collect(), replayed.lines().collect());
    let at = w.iter().zip(&r).position(|(a, b)| a != b).unwrap_or(w.len().min(r.len()));
    let from = at.saturating_sub(3);
    let show =
        |lines: &[&str]| lines.iter().skip(from).take(8).map(|l| format!("    |{l}")).collect::<Vec<_>>().join("\n");
    format!("at line {}:\n  written:\n{}\n  replayed:\n{}", at + 1, show(&w), show(&r))
}

/// Replays a transcript: keeps comments and inputs, writes each event's effects under it.
fn replay(text: &str) -> Result<String, String> {
    let mut engines: BTreeMap<String, Engine> = BTreeMap::new();
    let mut out = String::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("  ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        let Some(input) = line.strip_prefix("> ") else { continue };
        let at = |e: String| format!("line {}: {e}: {line}", number + 1);
        let tokens = tokenize(input).map_err(at)?;
        let (node, rest) = tokens.split_first().ok_or_else(|| at("no node".into()))?;
        let engine = engines.entry(node.clone()).or_insert_with(|| new_engine(node));
        if rest.first().map(String::as_str) == Some("state") {
            out.push_str(&format!("  = {}\n", state(engine)));
            continue;
        }
        if rest.first().map(String::as_str) == Some("witness") {
            // `witness ttl= [observe] [max-lag=] [min-interval=]`: the pair file's [witness].
            let args = Args::parse(&rest[1..]);
            engine.set_witness(Some(WitnessPolicy {
                automatic: !args.flag("observe"),
                ttl_ms: args.number("ttl").map_err(at)?,
                max_lag_ms: args.maybe("max-lag").map_err(at)?,
                min_interval_ms: args.maybe("min-interval").map_err(at)?.unwrap_or(300_000),
            }));
            out.push_str("  (witness set)\n");
            continue;
        }
        let event = parse_event(engine, rest).map_err(at)?;
        let effects = engine.step(event);
        if effects.is_empty() {
            out.push_str("  (nothing)\n");
        }
        for effect in effects {
            out.push_str(&format!("  {effect}\n"));
        }
    }
    Ok(out)
}

fn new_engine(node: &str) -> Engine {
    let peer = if node == "a" { "b" } else { "a" };
    Engine::new(Identity { node: node.into(), peer: peer.into(), cluster: Uuid::nil() })
}

fn state(engine: &Engine) -> String {
    let s = engine.state();
    let mut line =
        format!("role={} epoch={} history={} gate={}", s.role.name(), s.epoch, render::history(&s.history), s.gate);
    if let Some(lease) = s.drain {
        line.push_str(&format!(" lease=op {} until {}", render::id(&lease.op_id), lease.expires_at_ms));
    }
    if engine.busy() {
        line.push_str(" busy");
    }
    line
}

/// Splits on spaces, keeping `key="a quoted value"` and `key=[a history]` whole.
fn tokenize(input: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in input.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | ']' => {
                quoted = c == '[';
                current.push(c);
            }
            ' ' if !quoted => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quoted {
        return Err("unclosed quote".into());
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}

/// `key=value` arguments and bare flags of one event.
struct Args {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse(tokens: &[String]) -> Args {
        let mut values = BTreeMap::new();
        let mut flags = Vec::new();
        for token in tokens {
            match token.split_once('=') {
                Some((k, v)) => {
                    values.insert(k.to_string(), v.to_string());
                }
                None => flags.push(token.clone()),
            }
        }
        Args { values, flags }
    }

    fn text(&self, key: &str) -> Result<String, String> {
        self.values.get(key).cloned().ok_or_else(|| format!("missing {key}="))
    }

    fn number(&self, key: &str) -> Result<u64, String> {
        self.text(key)?.parse().map_err(|e| format!("{key}: {e}"))
    }

    fn maybe(&self, key: &str) -> Result<Option<u64>, String> {
        self.values.get(key).map(|v| v.parse().map_err(|e| format!("{key}: {e}"))).transpose()
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn id(&self, key: &str) -> Result<Uuid, String> {
        Ok(Uuid::from_u128(self.number(key)?.into()))
    }

    fn history(&self, key: &str) -> Result<Vec<HistoryEntry>, String> {
        parse_history(&self.text(key)?)
    }

    fn role(&self, key: &str) -> Result<Role, String> {
        parse_role(&self.text(key)?)
    }
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.into())).map_err(|e| format!("role {text}: {e}"))
}

/// `[1@1:a 2@41:b]`, written with `,` or spaces between entries.
fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let inner = text.trim_start_matches('[').trim_end_matches(']');
    inner
        .split([',', ' '])
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let bad = || format!("history entry {entry:?} is not EPOCH@FIRST:PRIMARY");
            let (epoch, rest) = entry.split_once('@').ok_or_else(bad)?;
            let (first, primary) = rest.split_once(':').ok_or_else(bad)?;
            Ok(HistoryEntry {
                epoch: epoch.parse().map_err(|_| bad())?,
                first_lsn: first.parse().map_err(|_| bad())?,
                primary: primary.to_string(),
            })
        })
        .collect()
}

/// The events, one per verb:
/// - `restart ROLE epoch= history= last= [met-peer] [promoted-epoch= received= heard=] [rejoined-epoch= orphaned= file=]`
/// - `drain op= epoch= lease= now=`, `resume op= epoch=`, `demote op= epoch=`,
///   `promote op= epoch= [expect=]`, `fence epoch= primary=`
/// - `rejoin op= primary-epoch= primary-history= primary-last= first-available= our-last= [dry-run] [full-copy]`
/// - `done in-flight-finished lsn= digest=` | `done pipeline-stopped` |
///   `done receiving-stopped last= heard=` | `done replayed last= applied=` |
///   `done orphans-counted orphaned=` | `done resynchronized orphaned= rewound= [file=]` |
///   `done follow-prepared` | `done failed reason= [applied-unconfirmed]`
/// - `hello epoch= role= history= last= our-last= [from=] [protocol=] [incarnation=] [known=|unknown]
///   [acknowledged=] [confirmed= matched=] [all-matched] [replication-stopped] [cluster=]`
/// - `probe-answer epoch= [leader=] [last=] our-last=`, `welcomed epoch= history= [cut-after=] [generation=]`
/// - `peer-acked`, `peer-lost`, `peer-back`, `tick now=`
/// - the witness (after `witness ttl= [observe] [max-lag=] [min-interval=]`):
///   `holder now= [key-epoch= key-node= [key-auto-at=]] [lease=] [backed=] [promised=] [unreachable]`,
///   `watcher [now=] silent= [leader] [lag=] [wall=] [key-…]`, `claimed op= epoch= lease=`, `raised op= epoch=`, `paused`, `resumed`
fn parse_event(engine: &Engine, tokens: &[String]) -> Result<Event, String> {
    let (verb, rest) = tokens.split_first().ok_or("no event")?;
    let args = Args::parse(rest);
    Ok(match verb.as_str() {
        "restart" => {
            let role = parse_role(args.flags.first().ok_or("restart needs a role")?)?;
            let epoch = args.number("epoch")?;
            let promotion = match args.maybe("promoted-epoch")? {
                Some(promoted) => Some(Promotion {
                    op_id: args.id("promoted-op").unwrap_or(Uuid::from_u128(0)),
                    epoch: promoted,
                    first_lsn: args.number("received")? + 1,
                    last_received_lsn: args.number("received")?,
                    last_heard_lsn: args.number("heard")?,
                }),
                None => None,
            };
            let rejoined = match args.maybe("rejoined-epoch")? {
                Some(rejoined) => Some(Rejoined {
                    op_id: args.id("rejoined-op").unwrap_or(Uuid::from_u128(0)),
                    epoch: rejoined,
                    divergence_lsn: args.number("divergence")?,
                    orphaned: args.number("orphaned")?,
                    orphans_file: args.values.get("file").cloned(),
                }),
                None => None,
            };
            let persisted = Persisted { role, epoch, history: args.history("history")?, promotion, rejoined };
            Event::Restarted(Recovered { persisted, last_lsn: args.number("last")?, met_peer: args.flag("met-peer") })
        }
        "drain" => Event::Admin(Primitive::Drain {
            op_id: args.id("op")?,
            epoch: args.number("epoch")?,
            lease_ms: args.number("lease")?,
            now_ms: args.number("now")?,
        }),
        "resume" => Event::Admin(Primitive::Resume { op_id: args.id("op")?, epoch: args.number("epoch")? }),
        "demote" => Event::Admin(Primitive::Demote { op_id: args.id("op")?, epoch: args.number("epoch")? }),
        "promote" => Event::Admin(Primitive::Promote {
            op_id: args.id("op")?,
            epoch: args.number("epoch")?,
            expect_lsn: args.maybe("expect")?,
        }),
        "fence" => Event::Admin(Primitive::Fence { epoch: args.number("epoch")?, primary: args.text("primary")? }),
        "rejoin" => Event::Admin(Primitive::Rejoin(RejoinRequest {
            op_id: args.id("op")?,
            primary: PrimaryView {
                history: args.history("primary-history")?,
                epoch: args.number("primary-epoch")?,
                last_lsn: args.number("primary-last")?,
                first_available: args.number("first-available")?,
            },
            dry_run: args.flag("dry-run"),
            full_copy: args.flag("full-copy"),
            our_last: args.number("our-last")?,
        })),
        "done" => Event::Done(parse_outcome(&args)?),
        "hello" => {
            let peer = engine.identity().peer.clone();
            let known = if args.flag("unknown") { None } else { Some(args.id("known").unwrap_or(Uuid::from_u128(1))) };
            Event::Hello(Hello {
                from: args.values.get("from").cloned().unwrap_or(peer),
                protocol: args.maybe("protocol")?.map_or(PROTOCOL_VERSION, |p| p as u32),
                cluster: args.id("cluster").unwrap_or(Uuid::nil()),
                incarnation: args.id("incarnation").unwrap_or(Uuid::from_u128(1)),
                epoch: args.number("epoch")?,
                role: args.role("role")?,
                history: args.history("history")?,
                last_lsn: args.number("last")?,
                tail: TailMatch {
                    confirmed_lsn: args.maybe("confirmed")?.unwrap_or(0),
                    matched: args.maybe("matched")?.unwrap_or(0),
                    all_matched: args.flag("all-matched"),
                },
                known_incarnation: known,
                acknowledged: args.maybe("acknowledged")?.unwrap_or(0),
                our_last: args.number("our-last")?,
                replicating: !args.flag("replication-stopped"),
            })
        }
        "probe-answer" => Event::ProbeAnswered {
            epoch: args.number("epoch")?,
            leader: args.values.get("leader").cloned(),
            last_lsn: args.maybe("last")?,
            our_last: args.number("our-last")?,
        },
        "welcomed" => Event::Welcomed {
            epoch: args.number("epoch")?,
            history: args.history("history")?,
            cut_after: args.maybe("cut-after")?,
            generation: args.maybe("generation")?.unwrap_or(engine.state().generation),
        },
        "peer-acked" => Event::PeerAcked,
        "peer-lost" => Event::PeerLost,
        "peer-back" => Event::PeerBack,
        "tick" => Event::Tick { now_ms: args.number("now")? },
        "holder" => Event::Witness(WitnessReport::Holder {
            now_ms: args.number("now")?,
            reachable: !args.flag("unreachable"),
            epoch_key: witness_epoch(&args)?,
            lease_until_ms: args.maybe("lease")?,
            backed_until_ms: args.maybe("backed")?,
            promised_until_ms: args.maybe("promised")?.unwrap_or(0),
        }),
        "watcher" => Event::Witness(WitnessReport::Watcher {
            now_ms: args.maybe("now")?.unwrap_or(0),
            wall_ms: args.maybe("wall")?.unwrap_or(0),
            reachable: !args.flag("unreachable"),
            leader_present: args.flag("leader"),
            epoch_key: witness_epoch(&args)?,
            primary_silent_ms: args.number("silent")?,
            lag_ms: args.maybe("lag")?.unwrap_or(0),
        }),
        "claimed" => Event::Witness(WitnessReport::Claimed {
            op_id: args.id("op")?,
            epoch: args.number("epoch")?,
            lease_until_ms: args.number("lease")?,
        }),
        "raised" => Event::Witness(WitnessReport::Raised { op_id: args.id("op")?, epoch: args.number("epoch")? }),
        "paused" => Event::Witness(WitnessReport::Paused(true)),
        "resumed" => Event::Witness(WitnessReport::Paused(false)),
        other => return Err(format!("unknown event {other}")),
    })
}

/// The witness's epoch key: `key-epoch= key-node= [key-auto-at=]` (absent: no key).
fn witness_epoch(args: &Args) -> Result<Option<WitnessEpoch>, String> {
    let Some(epoch) = args.maybe("key-epoch")? else { return Ok(None) };
    let node = args.values.get("key-node").cloned().ok_or("key-epoch needs key-node")?;
    let at_ms = args.maybe("key-auto-at")?;
    Ok(Some(WitnessEpoch { epoch, node, at_ms: at_ms.unwrap_or(0), automatic: at_ms.is_some() }))
}

fn parse_outcome(args: &Args) -> Result<Outcome, String> {
    let kind = args.flags.first().ok_or("done needs an outcome")?;
    Ok(match kind.as_str() {
        "in-flight-finished" => {
            Outcome::InFlightFinished { lsn: args.number("lsn")?, digest: Digest(args.number("digest")?.into()) }
        }
        "pipeline-stopped" => Outcome::PipelineStopped,
        "receiving-stopped" => {
            Outcome::ReceivingStopped { last_lsn: args.number("last")?, heard_primary_lsn: args.number("heard")? }
        }
        "replayed" => Outcome::Replayed { last_lsn: args.number("last")?, applied_lsn: args.number("applied")? },
        "orphans-counted" => Outcome::OrphansCounted { orphaned: args.number("orphaned")? },
        "resynchronized" => Outcome::Resynchronized {
            orphans_file: args.values.get("file").cloned(),
            orphaned: args.number("orphaned")?,
            rewound: args.number("rewound")?,
        },
        "follow-prepared" => Outcome::FollowPrepared,
        "failed" => {
            Outcome::Failed { reason: args.text("reason")?, applied_unconfirmed: args.flag("applied-unconfirmed") }
        }
        other => return Err(format!("unknown outcome {other}")),
    })
}
