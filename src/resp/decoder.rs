//! Incremental decoding of client requests: bytes as they arrive in, one request's arguments out.
//!
//! ## Job
//! The data port keeps one [`RequestDecoder`] per connection and calls
//! [`RequestDecoder::decode`] after every read. Each call goes on from where the last one
//! stopped: a header line is scanned from where the last scan ended, a bulk string's bytes are
//! not looked at until all of them are there, and every argument is cut from the read buffer
//! without a copy (`BytesMut::split_to`). So a request costs work linear in its size however it
//! is cut into reads — a 4 MiB request fed one byte at a time costs 4 Mi small calls, not 4 Mi
//! re-parses of a growing buffer (which is what [`super::parse`] alone would do: it starts from
//! the first byte every time).
//!
//! ## Invariants
//! - For every byte string, whatever the cuts: a request it returns is the one [`super::parse`]
//!   followed by [`super::request_arguments`] returns for the same bytes, and when those refuse
//!   the bytes, so does the decoder (property-tested below, and fuzzed by `tests/fuzz.rs`). The
//!   decoder may refuse *earlier*: an element that is not a bulk string (`:1`, `*…`) can never make
//!   a valid request, so it does not wait for the element's end.
//! - `Ok(None)` means "a proper prefix of a request that fits the limits: read more";
//!   `Err` means no continuation can make it valid. After an `Err` the decoder keeps refusing.
//! - [`RequestDecoder::bytes_examined`] counts every byte looked at; it never exceeds twice the
//!   bytes decoded plus the bytes of an unfinished line (a line is scanned once for its end, and
//!   an inline request a second time to split it).
//! - Limits are checked as in [`super::parse`]: declared lengths and counts before their bytes
//!   arrive, lines no longer than `max_inline_bytes`, a request no larger than `max_request_bytes`.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{parse_integer, quote, split_inline, ProtocolError, ProtocolErrorKind};
use super::Limits;

/// Where the decoder is within the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first byte of a request.
    Start,
    /// An inline request: looking for its LF.
    Inline,
    /// The `*n` line of a multi-bulk request.
    ArrayHeader,
    /// The `$n` line of element `args.len()` of `count`.
    BulkHeader { count: usize },
    /// The `length` bytes and CRLF of element `args.len()` of `count`.
    BulkData { count: usize, length: usize },
    /// A refusal was returned; nothing more is decoded.
    Failed,
}

/// A line that is not complete yet, or the length of a complete one (its CRLF excluded).
enum Line {
    Incomplete,
    Complete(usize),
}

/// Decodes the requests of one connection, one at a time, from a buffer the caller fills.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
    /// The arguments of the request being decoded so far.
    args: Vec<Bytes>,
    /// Bytes of those arguments.
    args_bytes: usize,
    /// Bytes of the current request already taken out of the buffer.
    consumed: usize,
    /// Bytes at the front of the buffer already scanned for the current line's end.
    line_scanned: usize,
    /// Every byte looked at so far (see the invariants).
    examined: u64,
    /// The refusal given, repeated to any later call.
    failure: Option<ProtocolError>,
}

impl RequestDecoder {
    pub fn new(limits: Limits) -> RequestDecoder {
        RequestDecoder {
            limits,
            state: State::Start,
            args: Vec::new(),
            args_bytes: 0,
            consumed: 0,
            line_scanned: 0,
            examined: 0,
            failure: None,
        }
    }

    /// Decodes the next request at the front of `buf`, taking its bytes out of `buf`.
    ///
    /// - `Ok(Some(args))`: a whole request, command name first. Empty for `*0` or a blank inline
    ///   line, which a server skips as Redis does. The rest of `buf` is the next requests.
    /// - `Ok(None)`: everything in `buf` belongs to an unfinished request; read more into the
    ///   same buffer and call again.
    /// - `Err`: the bytes can never make a valid request (see the module docs).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let decoded = self.step(buf);
        match decoded {
            Ok(Some(_)) if self.consumed > self.limits.max_request_bytes => {
                // A whole request, but larger than the limit (an inline line, a short header).
                let error = self.too_large();
                self.fail(&error);
                return Err(error);
            }
            Ok(Some(_)) => self.reset(),
            Ok(None) if self.consumed + buf.len() >= self.limits.max_request_bytes => {
                // Whatever completes the request would take it past the limit.
                let error = self.too_large();
                self.fail(&error);
                return Err(error);
            }
            Ok(None) => {}
            Err(ref error) => self.fail(error),
        }
        decoded
    }

    /// Bytes this decoder holds outside the caller's buffer: the arguments of the unfinished
    /// request. The connection counts them, with its buffer, against `max_client_memory`.
    pub fn held_bytes(&self) -> usize {
        self.args_bytes
    }

    /// How many more bytes the bulk string being read needs, when one is being read and
    /// `buffered` bytes of it are in the buffer: the caller can make room for exactly that.
    pub fn bytes_wanted(&self, buffered: usize) -> usize {
        match self.state {
            State::BulkData { length, .. } => (length + 2).saturating_sub(buffered),
            _ => 0,
        }
    }

    /// Every byte examined since the decoder was made: the measure of its work.
    pub fn bytes_examined(&self) -> u64 {
        self.examined
    }

    fn fail(&mut self, error: &ProtocolError) {
        self.state = State::Failed;
        self.failure = Some(error.clone());
        self.args = Vec::new();
        self.args_bytes = 0;
    }

    fn reset(&mut self) {
        self.state = State::Start;
        self.args_bytes = 0;
        self.consumed = 0;
        self.line_scanned = 0;
    }

    fn too_large(&self) -> ProtocolError {
        ProtocolError { offset: 0, kind: ProtocolErrorKind::RequestTooLarge { limit: self.limits.max_request_bytes } }
    }

    fn invalid<T>(&self, offset_in_buf: usize, kind: ProtocolErrorKind) -> Result<T, ProtocolError> {
        Err(ProtocolError { offset: self.consumed + offset_in_buf, kind })
    }

    /// Takes `count` bytes of the current request off the front of `buf`.
    fn take(&mut self, buf: &mut BytesMut, count: usize) {
        buf.advance(count);
        self.consumed += count;
        self.line_scanned = 0;
    }

    /// Runs the state machine until a request is whole, more bytes are needed, or it fails.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            match self.state {
                State::Failed => {
                    return Err(self.failure.clone().unwrap_or_else(|| self.too_large()));
                }
                State::Start => {
                    let Some(&first) = buf.first() else { return Ok(None) };
                    self.state = match first {
                        b'*' => State::ArrayHeader,
                        b'+' | b'-' | b':' | b'$' => {
                            let found = match first {
                                b'+' => "a simple string",
                                b'-' => "an error",
                                b':' => "an integer",
                                _ => "a bulk string",
                            };
                            return self.invalid(0, ProtocolErrorKind::NotAnArray { found });
                        }
                        _ => State::Inline,
                    };
                }
                State::Inline => return self.inline(buf),
                State::ArrayHeader => {
                    let Line::Complete(length) = self.line(buf, 1)? else { return Ok(None) };
                    let header = &buf[1..1 + length];
                    let count = match parse_integer(header) {
                        Some(-1) => return self.invalid(0, ProtocolErrorKind::NotAnArray { found: "a null array" }),
                        Some(count) if count >= 0 => count,
                        _ => {
                            let found = quote(header);
                            return self.invalid(0, ProtocolErrorKind::InvalidLength { what: "array", found });
                        }
                    };
                    let limit = self.limits.max_args;
                    let count = match usize::try_from(count) {
                        Ok(count) if count <= limit => count,
                        _ => return self.invalid(0, ProtocolErrorKind::TooManyElements { declared: count, limit }),
                    };
                    self.take(buf, 1 + length + 2);
                    self.args = Vec::with_capacity(count.min(64));
                    if count == 0 {
                        return Ok(Some(std::mem::take(&mut self.args)));
                    }
                    self.state = State::BulkHeader { count };
                }
                State::BulkHeader { count } => {
                    let Some(&type_byte) = buf.first() else { return Ok(None) };
                    if type_byte != b'$' {
                        return self.not_a_bulk_string(type_byte);
                    }
                    let Line::Complete(length) = self.line(buf, 1)? else { return Ok(None) };
                    let header = &buf[1..1 + length];
                    let declared = match parse_integer(header) {
                        Some(-1) => {
                            let index = self.args.len();
                            return self
                                .invalid(0, ProtocolErrorKind::NotBulkString { index, found: "a null bulk string" });
                        }
                        Some(declared) if declared >= 0 => declared,
                        _ => {
                            let found = quote(header);
                            return self.invalid(0, ProtocolErrorKind::InvalidLength { what: "bulk", found });
                        }
                    };
                    let limit = self.limits.max_value_bytes;
                    let data_length = match usize::try_from(declared) {
                        Ok(data_length) if data_length <= limit => data_length,
                        _ => return self.invalid(0, ProtocolErrorKind::BulkTooLarge { declared, limit }),
                    };
                    // Refuse now rather than buffer up to the limit first.
                    let end =
                        self.consumed.saturating_add(1 + length + 2).saturating_add(data_length).saturating_add(2);
                    if end > self.limits.max_request_bytes {
                        return Err(self.too_large());
                    }
                    self.take(buf, 1 + length + 2);
                    self.state = State::BulkData { count, length: data_length };
                }
                State::BulkData { count, length } => {
                    if buf.len() < length + 2 {
                        return Ok(None);
                    }
                    self.examined += 2;
                    if &buf[length..length + 2] != b"\r\n" {
                        let found = quote(&buf[length..length + 2]);
                        return self
                            .invalid(length, ProtocolErrorKind::MissingCrlf { what: "bulk string data", found });
                    }
                    let argument = buf.split_to(length).freeze();
                    self.consumed += length;
                    self.take(buf, 2);
                    self.args_bytes += argument.len();
                    self.args.push(argument);
                    if self.args.len() == count {
                        return Ok(Some(std::mem::take(&mut self.args)));
                    }
                    self.state = State::BulkHeader { count };
                }
            }
        }
    }

    /// The refusal for element `args.len()` starting with `type_byte` instead of `$`.
    fn not_a_bulk_string(&self, type_byte: u8) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let index = self.args.len();
        let found = match type_byte {
            b'+' => "a simple string",
            b'-' => "an error",
            b':' => "an integer",
            b'*' => "an array",
            other => return self.invalid(0, ProtocolErrorKind::UnknownType { found: quote(&[other]) }),
        };
        self.invalid(0, ProtocolErrorKind::NotBulkString { index, found })
    }

    /// Finds the end of the line that starts `skip` bytes into `buf` (after its type byte),
    /// scanning only bytes not scanned before. A line may not hold a bare CR or LF, nor be longer
    /// than `max_inline_bytes`.
    fn line(&mut self, buf: &BytesMut, skip: usize) -> Result<Line, ProtocolError> {
        let limit = self.limits.max_inline_bytes;
        let rest = buf.get(skip..).unwrap_or_default();
        let from = self.line_scanned.min(rest.len());
        let window_end = rest.len().min(limit + 1);
        let window = rest.get(from..window_end).unwrap_or_default();
        let Some(found) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
            self.examined += window.len() as u64;
            if rest.len() > limit {
                return self.invalid(skip, ProtocolErrorKind::LineTooLong { limit });
            }
            self.line_scanned = rest.len();
            return Ok(Line::Incomplete);
        };
        let end = from + found;
        self.examined += found as u64 + 1;
        if rest[end] == b'\n' {
            return self.invalid(skip + end, ProtocolErrorKind::BareLineFeed);
        }
        match rest.get(end + 1) {
            None => {
                // The CR is the last byte so far: look at it again when its LF may be there.
                self.line_scanned = end;
                Ok(Line::Incomplete)
            }
            Some(b'\n') => Ok(Line::Complete(end)),
            Some(_) => {
                let found = quote(&rest[end..end + 2]);
                self.invalid(skip + end, ProtocolErrorKind::MissingCrlf { what: "CR", found })
            }
        }
    }

    /// An inline request: one line ended by LF, split by Redis's quoting rules.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let limit = self.limits.max_inline_bytes;
        let from = self.line_scanned.min(buf.len());
        let window_end = buf.len().min(limit + 1);
        let window = buf.get(from..window_end).unwrap_or_default();
        let Some(found) = window.iter().position(|&b| b == b'\n') else {
            self.examined += window.len() as u64;
            if buf.len() > limit {
                return self.invalid(0, ProtocolErrorKind::InlineTooLong { limit });
            }
            self.line_scanned = buf.len();
            return Ok(None);
        };
        let newline = from + found;
        self.examined += found as u64 + 1 + newline as u64;
        let line = &buf[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = match split_inline(line) {
            Ok(args) => args,
            Err(kind) => return self.invalid(0, kind),
        };
        if args.len() > self.limits.max_args {
            let declared = i64::try_from(args.len()).unwrap_or(i64::MAX);
            return self.invalid(0, ProtocolErrorKind::TooManyElements { declared, limit: self.limits.max_args });
        }
        self.take(buf, newline + 1);
        Ok(Some(args.into_iter().map(Bytes::from).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{encode, parse, request_arguments, Frame};
    use proptest::prelude::*;

    /// How a byte string ends, after its whole requests.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        Incomplete,
        Refused,
    }

    /// What the one-shot parser makes of `bytes`: the requests, then how it ends.
    fn oracle(bytes: &[u8], limits: &Limits) -> (Vec<Vec<Bytes>>, End) {
        let mut requests = Vec::new();
        let mut offset = 0;
        loop {
            match parse(&bytes[offset..], limits) {
                Ok(Some((frame, used))) => {
                    offset += used;
                    match request_arguments(frame) {
                        Ok(args) => requests.push(args),
                        Err(_) => return (requests, End::Refused),
                    }
                }
                Ok(None) => return (requests, End::Incomplete),
                Err(_) => return (requests, End::Refused),
            }
        }
    }

    /// What the decoder makes of `bytes` fed in pieces cut at `cuts` (offsets, any order).
    fn decoded(bytes: &[u8], cuts: &[usize], limits: &Limits) -> (Vec<Vec<Bytes>>, End, RequestDecoder) {
        let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut decoder = RequestDecoder::new(*limits);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        let mut start = 0;
        for end in points {
            buf.extend_from_slice(&bytes[start..end]);
            start = end;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(args)) => requests.push(args),
                    Ok(None) => break,
                    Err(_) => return (requests, End::Refused, decoder),
                }
            }
        }
        (requests, End::Incomplete, decoder)
    }

    fn encoded_request(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&Frame::array(args.iter().map(|a| Frame::bulk(a.clone())).collect()), &mut out);
        out
    }

    fn small_limits() -> Limits {
        Limits { max_value_bytes: 64, max_args: 8, max_inline_bytes: 32, max_request_bytes: 256, ..Limits::default() }
    }

    /// The decoder agrees with the one-shot parser (see the module invariants).
    fn agrees(bytes: &[u8], cuts: &[usize], limits: &Limits) -> Result<(), TestCaseError> {
        let (expected, expected_end) = oracle(bytes, limits);
        let (found, found_end, _) = decoded(bytes, cuts, limits);
        prop_assert_eq!(&found, &expected, "requests differ for {:?}", bytes.escape_ascii().to_string());
        if expected_end == End::Refused {
            prop_assert_eq!(found_end, End::Refused, "the parser refuses {:?}", bytes.escape_ascii().to_string());
        }
        Ok(())
    }

    fn arb_request() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)
    }

    fn arb_noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop::sample::select(b"0123456789-*$:+%\r\n ab\"'\\x".to_vec()), 0..80)
    }

    proptest! {
        #[test]
        fn requests_in_any_cuts_decode_as_the_parser_parses_them(
            requests in proptest::collection::vec(arb_request(), 1..4),
            cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            let bytes: Vec<u8> = requests.iter().flat_map(|r| encoded_request(r)).collect();
            let (found, end, _) = decoded(&bytes, &cuts, &Limits::default());
            let expected: Vec<Vec<Bytes>> =
                requests.iter().map(|r| r.iter().map(|a| Bytes::from(a.clone())).collect()).collect();
            prop_assert_eq!(found, expected);
            prop_assert_eq!(end, End::Incomplete);
        }

        #[test]
        fn noise_decodes_as_the_parser_parses_it(
            noise in arb_noise(),
            cuts in proptest::collection::vec(0usize..100, 0..8),
        ) {
            agrees(&noise, &cuts, &small_limits())?;
            agrees(&noise, &cuts, &Limits::default())?;
        }

        #[test]
        fn requests_with_noise_decode_as_the_parser_parses_them(
            request in arb_request(),
            noise in arb_noise(),
            at in 0usize..300,
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut bytes = encoded_request(&request);
            let at = at.min(bytes.len());
            bytes.splice(at..at, noise);
            agrees(&bytes, &cuts, &small_limits())?;
        }

        #[test]
        fn inline_requests_decode_as_the_parser_parses_them(
            line in "[a-z \"'\\\\]{0,40}",
            cuts in proptest::collection::vec(0usize..50, 0..6),
        ) {
            agrees(format!("{line}\r\nPING\n").as_bytes(), &cuts, &Limits::default())?;
        }
    }

    #[test]
    fn a_large_request_fed_a_byte_at_a_time_costs_work_linear_in_its_size() {
        // ~4 MiB: MSET with 4000 pairs of 1000-byte values, the shape that re-parsing made
        // quadratic (every argument copied again on every read).
        let mut args = vec![b"MSET".to_vec()];
        for i in 0..4000 {
            args.push(format!("key:{i}").into_bytes());
            args.push(vec![b'v'; 1000]);
        }
        let bytes = encoded_request(&args);
        assert!(bytes.len() > 4_000_000);
        let limits = Limits { max_args: 10_000, max_request_bytes: 8 << 20, ..Limits::default() };
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut request = None;
        for &byte in &bytes {
            buf.extend_from_slice(&[byte]);
            if let Some(args) = decoder.decode(&mut buf).unwrap() {
                request = Some(args);
            }
        }
        assert_eq!(request.map(|args| args.len()), Some(8001));
        assert!(
            decoder.bytes_examined() <= bytes.len() as u64,
            "{} bytes examined for a request of {}",
            decoder.bytes_examined(),
            bytes.len()
        );
    }

    #[test]
    fn arguments_are_cut_from_the_buffer_without_a_copy() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let args = RequestDecoder::new(Limits::default()).decode(&mut buf).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from_static(b"GET"), Bytes::from_static(b"hello")]);
        assert_eq!(args[1].as_ptr() as usize, start + 17);
    }

    #[test]
    fn limits_are_checked_before_the_bytes_arrive() {
        let limits = Limits { max_value_bytes: 100, max_request_bytes: 64, max_args: 3, ..Limits::default() };
        let kind = |bytes: &[u8]| {
            let mut decoder = RequestDecoder::new(limits);
            decoder.decode(&mut BytesMut::from(bytes)).unwrap_err().kind
        };
        assert_eq!(kind(b"*1\r\n$101\r\n"), ProtocolErrorKind::BulkTooLarge { declared: 101, limit: 100 });
        assert_eq!(kind(b"*2\r\n$3\r\nSET\r\n$60\r\n"), ProtocolErrorKind::RequestTooLarge { limit: 64 });
        assert_eq!(kind(b"*4\r\n"), ProtocolErrorKind::TooManyElements { declared: 4, limit: 3 });
        assert_eq!(kind(b"*1\r\n:1\r\n"), ProtocolErrorKind::NotBulkString { index: 0, found: "an integer" });
        assert_eq!(kind(b"*-1\r\n"), ProtocolErrorKind::NotAnArray { found: "a null array" });
        assert_eq!(kind(b"$3\r\n"), ProtocolErrorKind::NotAnArray { found: "a bulk string" });
        assert_eq!(kind(b"*1\r\n%"), ProtocolErrorKind::UnknownType { found: "%".into() });
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(&b"*1\r\n$100\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError { offset: 0, kind: ProtocolErrorKind::RequestTooLarge { limit: 64 } })
        );
        // A refusal sticks.
        assert!(decoder.decode(&mut BytesMut::from(&b"PING\r\n"[..])).is_err());
    }

    #[test]
    fn errors_say_where_in_the_request() {
        let error = RequestDecoder::new(Limits::default())
            .decode(&mut BytesMut::from(&b"*1\r\n$3\r\nabcd\r\n"[..]))
            .unwrap_err();
        assert_eq!(error.to_string(), "expected CRLF after bulk string data, got 'd\\r' (at byte 11 of the request)");
        let error =
            RequestDecoder::new(Limits::default()).decode(&mut BytesMut::from(&b"*2\r\n$abc\r\n"[..])).unwrap_err();
        assert_eq!(error.to_string(), "invalid bulk length 'abc' (at byte 4 of the request)");
    }

    #[test]
    fn a_pending_bulk_says_how_many_bytes_it_still_wants() {
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$1000\r\nabc"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.bytes_wanted(buf.len()), 999);
        assert_eq!(decoder.held_bytes(), 0);
    }
}
