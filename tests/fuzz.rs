//! Fuzzing of the three decoders that read bytes from outside the process: the data port's RESP
//! decoders (`resp::parse` and the incremental `resp::RequestDecoder`), the control port's frame
//! decoder (`wire::read_frame`) and the journal record and segment-header decoders
//! (`journal::format`). Each gets inputs from a seeded generator — random bytes, bytes drawn
//! from the format's own alphabet, and valid encodings mutated (bits flipped, bytes inserted,
//! deleted or duplicated, cut short) — and every input is checked for:
//!
//! - no panic;
//! - *incomplete* told apart from *invalid*: a valid encoding cut short is incomplete, never
//!   invalid; an input found invalid stays invalid whatever is appended to it; a decoded value
//!   never claims more bytes than it was given;
//! - for the RESP request decoder, the same requests as the one-shot parser, whatever the cuts.
//!
//! The default run (`cargo test --release --test fuzz`) tries 20,000 inputs per decoder. The long
//! run, at least a million each, is
//! `HOTPAIR_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture` (docs/security.md);
//! `HOTPAIR_FUZZ_SEED` picks another seed. A failure names the seed and the case to replay.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use hotpair::replication::wire::{self, Envelope, Message, WireError};
use hotpair::resp::{encode, parse, request_arguments, Frame, Limits, RequestDecoder};
use hotpair::storage::journal::format::{decode_record, encode_record, DecodeError, FRAME_HEADER_LEN};
use hotpair::storage::journal::{HistoryEntry, JournalKind, Op, Record, RecordBody, SegmentHeader};
use hotpair::Digest;

const DEFAULT_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x005e_ed0f_4075_7a17;

fn cases() -> u64 {
    std::env::var("HOTPAIR_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_CASES)
}

fn seed() -> u64 {
    std::env::var("HOTPAIR_FUZZ_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_SEED)
}

/// xorshift64*: small, fast, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        Rng((seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let length = self.below(max + 1);
        (0..length).map(|_| self.next() as u8).collect()
    }

    fn drawn_from(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
        let length = self.below(max + 1);
        (0..length).map(|_| alphabet[self.below(alphabet.len())]).collect()
    }

    /// A few random edits of `input`.
    fn mutate(&mut self, mut input: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + self.below(4) {
            let at = self.below(input.len() + 1);
            match self.below(6) {
                0 if !input.is_empty() => {
                    let i = at.min(input.len() - 1);
                    input[i] ^= 1 << self.below(8);
                }
                1 => input.insert(at, self.next() as u8),
                2 if at < input.len() => {
                    input.remove(at);
                }
                3 => input.truncate(at),
                4 if at < input.len() => {
                    let end = (at + 1 + self.below(16)).min(input.len());
                    let copy = input[at..end].to_vec();
                    input.splice(at..at, copy);
                }
                _ => {
                    let digits = self.next().to_string().into_bytes();
                    input.splice(at..at, digits);
                }
            }
        }
        input
    }
}

/// Runs `check` on `cases()` inputs, naming the seed and case of the first that fails or panics.
fn fuzz(name: &str, check: impl Fn(&mut Rng) -> Result<(), String>) {
    let (seed, cases) = (seed(), cases());
    for case in 0..cases {
        let mut rng = Rng::new(seed, case);
        match catch_unwind(AssertUnwindSafe(|| check(&mut rng))) {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => panic!("{name}: case {case} of seed {seed} failed: {failure}"),
            Err(_) => panic!("{name}: case {case} of seed {seed} panicked (HOTPAIR_FUZZ_SEED={seed})"),
        }
    }
    eprintln!("{name}: {cases} inputs from seed {seed}, no failure");
}

fn shown(bytes: &[u8]) -> String {
    bytes.iter().take(200).copied().map(std::ascii::escape_default).map(|e| e.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// RESP

fn resp_limits(rng: &mut Rng) -> Limits {
    if rng.chance(2) {
        return Limits::default();
    }
    Limits {
        max_value_bytes: 1 + rng.below(100),
        max_args: 1 + rng.below(10),
        max_inline_bytes: 1 + rng.below(64),
        max_request_bytes: 1 + rng.below(400),
        ..Limits::default()
    }
}

fn resp_input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => rng.bytes(300),
        1 => rng.drawn_from(b"*$:+-%0123456789\r\n \"'\\xabSETGET", 300),
        _ => {
            let mut out = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let args: Vec<Frame> = (0..1 + rng.below(5)).map(|_| Frame::bulk(rng.bytes(40))).collect();
                encode(&Frame::array(args), &mut out);
            }
            if rng.chance(3) {
                out
            } else {
                rng.mutate(out)
            }
        }
    }
}

/// The one-shot parser's reading: requests, then whether it ends refused.
fn oracle(bytes: &[u8], limits: &Limits) -> (Vec<Vec<Bytes>>, bool) {
    let (mut requests, mut offset) = (Vec::new(), 0);
    loop {
        match parse(&bytes[offset..], limits) {
            Ok(Some((frame, used))) => {
                offset += used;
                match request_arguments(frame) {
                    Ok(args) => requests.push(args),
                    Err(_) => return (requests, true),
                }
            }
            Ok(None) => return (requests, false),
            Err(_) => return (requests, true),
        }
    }
}

#[test]
fn resp_parse_never_panics_and_invalid_stays_invalid() {
    fuzz("resp::parse", |rng| {
        let limits = resp_limits(rng);
        let input = resp_input(rng);
        match parse(&input, &limits) {
            Ok(Some((_, used))) if used == 0 || used > input.len() => {
                Err(format!("claimed {used} of {} bytes: {}", input.len(), shown(&input)))
            }
            Err(_) => {
                let mut longer = input.clone();
                longer.extend(rng.bytes(40));
                match parse(&longer, &limits) {
                    Err(_) => Ok(()),
                    other => Err(format!("invalid {} became {other:?} with more bytes", shown(&input))),
                }
            }
            _ => Ok(()),
        }
    });
}

#[test]
fn resp_request_decoder_agrees_with_the_parser_in_any_cuts() {
    fuzz("resp::RequestDecoder", |rng| {
        let limits = resp_limits(rng);
        let input = resp_input(rng);
        let (expected, refused) = oracle(&input, &limits);
        let mut decoder = RequestDecoder::new(limits);
        let mut buffer = BytesMut::new();
        let (mut found, mut decoder_refused, mut fed) = (Vec::new(), false, 0);
        while fed < input.len() && !decoder_refused {
            let piece = 1 + rng.below(input.len() - fed);
            buffer.extend_from_slice(&input[fed..fed + piece]);
            fed += piece;
            loop {
                match decoder.decode(&mut buffer) {
                    Ok(Some(args)) => found.push(args),
                    Ok(None) => break,
                    Err(_) => {
                        decoder_refused = true;
                        break;
                    }
                }
            }
        }
        if found != expected {
            return Err(format!("requests differ for {}: {found:?} vs {expected:?}", shown(&input)));
        }
        if refused && !decoder_refused {
            return Err(format!("the parser refuses {} but the decoder waits for more", shown(&input)));
        }
        if decoder_refused && decoder.decode(&mut BytesMut::from(&b"PING\r\n"[..])).is_ok() {
            return Err("a refusal did not stick".into());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The control port's frames

fn read_frame(bytes: &[u8]) -> Result<Option<wire::Frame>, WireError> {
    // Reading a byte slice never waits, so a current-thread runtime polls it to the end at once.
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut reader = bytes;
    runtime.block_on(wire::read_frame(&mut reader))
}

fn valid_wire_frame(rng: &mut Rng) -> wire::Frame {
    let history = vec![HistoryEntry { epoch: 1 + rng.below(5) as u64, first_lsn: 1, primary: "a".into() }];
    let message = match rng.below(5) {
        0 => Message::Heartbeat {
            seq: rng.next(),
            time_ms: rng.next(),
            last_lsn: rng.next(),
            head_lsn: rng.next(),
            echo_ms: rng.next(),
        },
        1 => Message::Durable { lsn: rng.next() },
        2 => Message::Diverged { at_lsn: rng.next(), history },
        3 => Message::Refused {
            reason: String::from_utf8_lossy(&rng.bytes(30)).into_owned(),
            last_lsn: None,
            leader: None,
        },
        _ => Message::CopyEnd { pairs: rng.next(), position: None },
    };
    match rng.below(3) {
        0 => wire::Frame::Message(Envelope { from: "a".into(), epoch: rng.next(), message }),
        1 => wire::Frame::Records { durable: rng.next(), head: rng.next(), frames: rng.bytes(100) },
        _ => wire::Frame::Copy(rng.bytes(100)),
    }
}

#[test]
fn control_frames_never_panic_and_a_cut_frame_is_incomplete() {
    fuzz("wire::read_frame", |rng| {
        let frame = valid_wire_frame(rng);
        let encoded = wire::encode_frame(&frame);
        match rng.below(3) {
            0 => {
                // A whole frame reads back; every strict prefix is an early end, never invalid.
                match read_frame(&encoded) {
                    Ok(Some(read)) if read == frame => {}
                    other => return Err(format!("{frame:?} read back as {other:?}")),
                }
                let cut = rng.below(encoded.len());
                match (cut, read_frame(&encoded[..cut])) {
                    (0, Ok(None)) => Ok(()),
                    (_, Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
                    (_, other) => Err(format!("{cut} bytes of a frame read as {other:?}")),
                }
            }
            1 => {
                let input = rng.mutate(encoded);
                // Anything but a panic; a frame read never claims a type it does not have.
                let _ = read_frame(&input);
                Ok(())
            }
            _ => {
                // A plausible length, then noise.
                let mut input = ((1 + rng.below(300)) as u32).to_le_bytes().to_vec();
                input.extend(rng.bytes(300));
                let _ = read_frame(&input);
                Ok(())
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The journal's records and segment headers

fn valid_record(rng: &mut Rng) -> Record {
    let body = match rng.below(4) {
        0 => RecordBody::Txn {
            ops: (0..rng.below(4))
                .map(|_| Op {
                    key: rng.bytes(20),
                    before: rng.chance(2).then(|| rng.bytes(30)),
                    after: rng.chance(2).then(|| rng.bytes(30)),
                })
                .collect(),
            // The client commands of increments (kind 5 records), sometimes.
            commands: (0..rng.below(3)).map(|_| (0..1 + rng.below(3)).map(|_| rng.bytes(10)).collect()).collect(),
        },
        1 => RecordBody::EpochStart {
            history: vec![HistoryEntry { epoch: rng.next(), first_lsn: rng.next(), primary: "b".into() }],
        },
        2 => RecordBody::Canary { sequence: rng.next() },
        _ => RecordBody::Checkpoint { key_count: rng.next() },
    };
    Record {
        lsn: rng.next(),
        epoch: rng.next(),
        timestamp_ms: rng.next(),
        digest_after: Digest::from_le_bytes((rng.next() as u128).to_le_bytes()),
        body,
    }
}

/// A frame around `body` with a correct length and CRC, so the body decoder itself is fuzzed.
fn framed(body: &[u8]) -> Vec<u8> {
    let length = (body.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), body);
    [&length[..], &crc.to_le_bytes(), body].concat()
}

#[test]
fn journal_records_never_panic_and_a_torn_record_is_incomplete() {
    fuzz("journal::format::decode_record", |rng| {
        let record = valid_record(rng);
        let mut encoded = Vec::new();
        encode_record(&record, &mut encoded);
        let input = match rng.below(4) {
            0 => {
                match decode_record(&encoded) {
                    Ok((read, used)) if read == record && used == encoded.len() => {}
                    other => return Err(format!("{record:?} decoded as {other:?}")),
                }
                let cut = rng.below(encoded.len());
                return match decode_record(&encoded[..cut]) {
                    Err(DecodeError::Incomplete) => Ok(()),
                    other => Err(format!("{cut} bytes of a record decoded as {other:?}")),
                };
            }
            1 => rng.mutate(encoded),
            2 => {
                // A valid frame around a mutated body: past the CRC, into the body decoder.
                let body = rng.mutate(encoded[FRAME_HEADER_LEN..].to_vec());
                framed(&body)
            }
            _ => rng.bytes(200),
        };
        match decode_record(&input) {
            Ok((_, used)) if used > input.len() => Err(format!("claimed {used} of {} bytes", input.len())),
            Err(DecodeError::Invalid(_)) => {
                let mut longer = input.clone();
                longer.extend(rng.bytes(40));
                match decode_record(&longer) {
                    Err(DecodeError::Invalid(_)) => Ok(()),
                    other => Err(format!("invalid {} became {other:?} with more bytes", shown(&input))),
                }
            }
            _ => Ok(()),
        }
    });
}

#[test]
fn journal_segment_headers_never_panic() {
    fuzz("journal::format::SegmentHeader::decode", |rng| {
        let header = SegmentHeader {
            kind: if rng.chance(2) { JournalKind::Local } else { JournalKind::Remote },
            cluster: (rng.next() as u128).to_le_bytes(),
            node: "a".repeat(1 + rng.below(64)),
            first_lsn: rng.next(),
            epoch: rng.next(),
            created_ms: rng.next(),
        };
        let encoded = header.encode().to_vec();
        if rng.chance(4) {
            return match SegmentHeader::decode(&encoded) {
                Ok(read) if read == header => Ok(()),
                other => Err(format!("{header:?} decoded as {other:?}")),
            };
        }
        let input = if rng.chance(2) { rng.mutate(encoded) } else { rng.bytes(200) };
        let _ = SegmentHeader::decode(&input);
        Ok(())
    });
}
