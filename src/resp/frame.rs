//! RESP2 frames and their codec: bytes in, [`Frame`] out, and back. No I/O.
//!
//! ## Wire format
//! Every frame starts with a type byte and every line ends with CRLF:
//!
//! | type | bytes | frame |
//! | --- | --- | --- |
//! | simple string | `+OK\r\n` | `Frame::Simple("OK")` |
//! | error | `-ERR no\r\n` | `Frame::Error("ERR no")` |
//! | integer | `:42\r\n` | `Frame::Integer(42)` |
//! | bulk string | `$3\r\nfoo\r\n`, null: `$-1\r\n` | `Frame::Bulk(Some("foo"))`, `Frame::Bulk(None)` |
//! | array | `*2\r\n:1\r\n:2\r\n`, null: `*-1\r\n` | `Frame::Array(Some([…]))`, `Frame::Array(None)` |
//!
//! A request whose first byte is not a type byte is an *inline command*: one line ended by LF
//! (CRLF accepted), split on whitespace with Redis's quoting rules (`"…"` with `\n`, `\xHH` …
//! escapes, `'…'` with `\'`). It parses as an array of bulk strings, like the multi-bulk form.
//!
//! ## Incomplete versus invalid
//! [`parse`] answers `Ok(None)` when the bytes so far are a prefix of a valid frame (read more and
//! call again), and `Err` as soon as no continuation could make them valid — so a client learns of
//! its mistake without the server waiting for bytes that will never make sense.
//!
//! ## Bounds
//! Nothing is allocated for a bulk string before all of it has arrived, and its declared length is
//! checked against [`Limits::max_value_bytes`] and [`Limits::max_request_bytes`] first. An array
//! reserves room for at most as many elements as the remaining bytes could hold. Lines are scanned
//! no further than [`Limits::max_inline_bytes`]; nesting stops at [`MAX_NESTING_DEPTH`].

use bytes::Bytes;

use super::Limits;

/// Deepest nesting of arrays [`parse`] accepts. Requests are one level deep; the deepest reply
/// Redis defines (`ROLE` on a primary) is three. The bound keeps parsing off the end of the stack.
pub const MAX_NESTING_DEPTH: usize = 8;

/// How much of a client's bytes an error message quotes back.
const QUOTE_BYTES: usize = 32;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+text`: a short status such as `OK`. [`encode`] turns any CR or LF in it into a space.
    Simple(String),
    /// `-CODE message`: the first word is the error code (`ERR`, `READONLY`, `TRYAGAIN` …).
    /// [`encode`] turns any CR or LF in it into a space.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` then n bytes; `None` is the null bulk string (a missing key).
    Bulk(Option<Bytes>),
    /// `*n` then n frames; `None` is the null array.
    Array(Option<Vec<Frame>>),
    /// A reply only: RESP3's map (`%n`), sent to a RESP2 client as a flat array of key, value, …
    Map(Vec<(Frame, Frame)>),
    /// A reply only: RESP3's set (`~n`), sent to a RESP2 client as an array.
    Set(Vec<Frame>),
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple("OK".to_string())
    }

    pub fn simple(text: impl Into<String>) -> Frame {
        Frame::Simple(text.into())
    }

    /// An error reply; `text` starts with its code, e.g. `"READONLY You can't write against a
    /// read only replica."`.
    pub fn error(text: impl Into<String>) -> Frame {
        Frame::Error(text.into())
    }

    pub fn bulk(data: impl Into<Bytes>) -> Frame {
        Frame::Bulk(Some(data.into()))
    }

    /// The null bulk string, `$-1`: what `GET` answers for a missing key.
    pub fn null() -> Frame {
        Frame::Bulk(None)
    }

    pub fn array(items: Vec<Frame>) -> Frame {
        Frame::Array(Some(items))
    }

    /// A short name of the frame's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::Simple(_) => "a simple string",
            Frame::Error(_) => "an error",
            Frame::Integer(_) => "an integer",
            Frame::Bulk(None) => "a null bulk string",
            Frame::Bulk(Some(_)) => "a bulk string",
            Frame::Array(None) => "a null array",
            Frame::Array(Some(_)) => "an array",
            Frame::Map(_) => "a map",
            Frame::Set(_) => "a set",
        }
    }
}

/// Bytes that can never become a valid frame, whatever follows them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset} of the request)")]
pub struct ProtocolError {
    /// Where the offending part starts, counted from the first byte of the request.
    pub offset: usize,
    pub kind: ProtocolErrorKind,
}

/// What was wrong. Messages that quote the client's bytes quote at most 32 of them, escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolErrorKind {
    #[error("invalid {what} length '{found}'")]
    InvalidLength { what: &'static str, found: String },
    #[error("bulk length {declared} exceeds max_value_bytes ({limit})")]
    BulkTooLarge { declared: i64, limit: usize },
    #[error("array of {declared} elements exceeds max_args ({limit})")]
    TooManyElements { declared: i64, limit: usize },
    #[error("no CRLF within max_inline_bytes ({limit})")]
    LineTooLong { limit: usize },
    #[error("inline request longer than max_inline_bytes ({limit})")]
    InlineTooLong { limit: usize },
    #[error("request exceeds max_request_bytes ({limit})")]
    RequestTooLarge { limit: usize },
    #[error("arrays nested deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("unknown frame type '{found}'")]
    UnknownType { found: String },
    #[error("expected CRLF after {what}, got '{found}'")]
    MissingCrlf { what: &'static str, found: String },
    #[error("bare LF inside a line (lines end with CRLF)")]
    BareLineFeed,
    #[error("invalid integer '{found}'")]
    InvalidInteger { found: String },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("unbalanced quotes in inline request")]
    UnbalancedQuotes,
    #[error("request is {found}; expected an array of bulk strings")]
    NotAnArray { found: &'static str },
    #[error("request element {index} is {found}; expected a bulk string")]
    NotBulkString { index: usize, found: &'static str },
}

/// Parses the frame at the start of `buf`.
///
/// - `Ok(Some((frame, used)))`: a whole frame, `used` bytes long; the rest of `buf` is untouched.
/// - `Ok(None)`: `buf` is a proper prefix of a frame that fits the limits; read more bytes.
/// - `Err`: no bytes appended to `buf` could make it valid (or it would break a limit).
///
/// A first byte that is not a RESP type byte starts an inline command (see the module docs).
/// An empty or blank inline line parses as an empty array, which a server skips.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut parser = Parser { buf, pos: 0, limits };
    let parsed = if is_type_byte(first) { parser.frame(0) } else { parser.inline() };
    match parsed {
        Ok(_) if parser.pos > limits.max_request_bytes => Err(too_large(limits)),
        Ok(frame) => Ok(Some((frame, parser.pos))),
        // Whatever completes the frame would take it past the request limit.
        Err(Halt::Incomplete) if buf.len() >= limits.max_request_bytes => Err(too_large(limits)),
        Err(Halt::Incomplete) => Ok(None),
        Err(Halt::Invalid(error)) => Err(error),
    }
}

/// Appends the RESP2 wire form of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    encode_as(frame, Protocol::Resp2, out)
}

/// The reply protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// Appends the wire form of `frame` in `protocol` to `out`. RESP3 differs for replies only: one
/// null (`_`) for both RESP2 nulls, maps (`%`) and sets (`~`) instead of arrays.
pub fn encode_as(frame: &Frame, protocol: Protocol, out: &mut Vec<u8>) {
    let resp3 = protocol == Protocol::Resp3;
    match frame {
        Frame::Bulk(None) | Frame::Array(None) if resp3 => out.extend_from_slice(b"_\r\n"),
        Frame::Map(pairs) => {
            if resp3 {
                out.push(b'%');
                push_length(pairs.len(), out);
            } else {
                out.push(b'*');
                push_length(pairs.len() * 2, out);
            }
            for (key, value) in pairs {
                encode_as(key, protocol, out);
                encode_as(value, protocol, out);
            }
        }
        Frame::Set(items) => {
            out.push(if resp3 { b'~' } else { b'*' });
            push_length(items.len(), out);
            for item in items {
                encode_as(item, protocol, out);
            }
        }
        _ => encode_plain(frame, protocol, out),
    }
}

/// The frames both protocols write alike (their elements may differ).
fn encode_plain(frame: &Frame, protocol: Protocol, out: &mut Vec<u8>) {
    match frame {
        Frame::Simple(text) => encode_line(b'+', text, out),
        Frame::Error(text) => encode_line(b'-', text, out),
        Frame::Integer(value) => {
            out.push(b':');
            push_decimal(*value, out);
            out.extend_from_slice(b"\r\n");
        }
        Frame::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        Frame::Bulk(Some(data)) => {
            out.push(b'$');
            push_length(data.len(), out);
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        Frame::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        Frame::Array(Some(items)) => {
            out.push(b'*');
            push_length(items.len(), out);
            for item in items {
                encode_as(item, protocol, out);
            }
        }
        Frame::Map(_) | Frame::Set(_) => encode_as(frame, protocol, out),
    }
}

/// Parses a signed 64-bit decimal exactly as Redis does (`string2ll`): an optional `-`, then `0`
/// or digits without a leading zero; no `+`, no spaces, no `-0`, no overflow.
pub fn parse_integer(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        // Accumulating toward the sign reaches i64::MIN without overflowing.
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(digit)? } else { value.checked_add(digit)? };
    }
    Some(value)
}

/// Quotes up to [`QUOTE_BYTES`] of a client's bytes, escaped, for an error message.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_BYTES)];
    let mut text = shown.escape_ascii().to_string();
    if bytes.len() > QUOTE_BYTES {
        text.push('…');
    }
    text
}

fn is_type_byte(byte: u8) -> bool {
    matches!(byte, b'+' | b'-' | b':' | b'$' | b'*')
}

fn too_large(limits: &Limits) -> ProtocolError {
    ProtocolError { offset: 0, kind: ProtocolErrorKind::RequestTooLarge { limit: limits.max_request_bytes } }
}

/// Why parsing stopped before a whole frame.
enum Halt {
    Incomplete,
    Invalid(ProtocolError),
}

fn invalid<T>(offset: usize, kind: ProtocolErrorKind) -> Result<T, Halt> {
    Err(Halt::Invalid(ProtocolError { offset, kind }))
}

/// A cursor over one request. Invariant: `pos <= buf.len()`.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// One frame, `depth` arrays deep.
    fn frame(&mut self, depth: usize) -> Result<Frame, Halt> {
        let start = self.pos;
        let Some(&type_byte) = self.rest().first() else {
            return Err(Halt::Incomplete);
        };
        self.pos += 1;
        match type_byte {
            b'+' => Ok(Frame::Simple(self.text_line("simple string")?)),
            b'-' => Ok(Frame::Error(self.text_line("error")?)),
            b':' => {
                let line = self.line()?;
                match parse_integer(line) {
                    Some(value) => Ok(Frame::Integer(value)),
                    None => invalid(start + 1, ProtocolErrorKind::InvalidInteger { found: quote(line) }),
                }
            }
            b'$' => self.bulk(start),
            b'*' => self.array(start, depth),
            other => invalid(start, ProtocolErrorKind::UnknownType { found: quote(&[other]) }),
        }
    }

    /// The bytes before the next CRLF, consuming both. A line may not hold a bare CR or LF.
    fn line(&mut self) -> Result<&'a [u8], Halt> {
        let start = self.pos;
        let rest = self.rest();
        let limit = self.limits.max_inline_bytes;
        let Some(end) = rest.iter().take(limit + 1).position(|&b| b == b'\r' || b == b'\n') else {
            if rest.len() > limit {
                return invalid(start, ProtocolErrorKind::LineTooLong { limit });
            }
            return Err(Halt::Incomplete);
        };
        match rest.get(end..end + 2) {
            _ if rest.get(end) == Some(&b'\n') => invalid(start + end, ProtocolErrorKind::BareLineFeed),
            None => Err(Halt::Incomplete),
            Some(b"\r\n") => {
                self.pos = start + end + 2;
                Ok(&rest[..end])
            }
            Some(found) => invalid(start + end, ProtocolErrorKind::MissingCrlf { what: "CR", found: quote(found) }),
        }
    }

    fn text_line(&mut self, what: &'static str) -> Result<String, Halt> {
        let start = self.pos;
        let line = self.line()?;
        match std::str::from_utf8(line) {
            Ok(text) => Ok(text.to_string()),
            Err(_) => invalid(start, ProtocolErrorKind::InvalidUtf8 { what }),
        }
    }

    /// The length in the header of the frame at `start` (`$n` or `*n`): `None` for -1 (null).
    fn length(&mut self, what: &'static str, start: usize) -> Result<Option<i64>, Halt> {
        let line = self.line()?;
        match parse_integer(line) {
            Some(-1) => Ok(None),
            Some(length) if length >= 0 => Ok(Some(length)),
            _ => invalid(start, ProtocolErrorKind::InvalidLength { what, found: quote(line) }),
        }
    }

    fn bulk(&mut self, start: usize) -> Result<Frame, Halt> {
        let Some(declared) = self.length("bulk", start)? else {
            return Ok(Frame::Bulk(None));
        };
        let limit = self.limits.max_value_bytes;
        let too_large = || invalid(start, ProtocolErrorKind::BulkTooLarge { declared, limit });
        let Ok(length) = usize::try_from(declared) else {
            return too_large();
        };
        if length > limit {
            return too_large();
        }
        let data_start = self.pos;
        let end = data_start.saturating_add(length).saturating_add(2);
        // Refuse now rather than buffer up to the limit first.
        if end > self.limits.max_request_bytes {
            return invalid(0, ProtocolErrorKind::RequestTooLarge { limit: self.limits.max_request_bytes });
        }
        let Some(data_and_crlf) = self.buf.get(data_start..end) else {
            return Err(Halt::Incomplete);
        };
        let (data, crlf) = data_and_crlf.split_at(length);
        if crlf != b"\r\n" {
            let found = quote(crlf);
            return invalid(data_start + length, ProtocolErrorKind::MissingCrlf { what: "bulk string data", found });
        }
        self.pos = end;
        Ok(Frame::Bulk(Some(Bytes::copy_from_slice(data))))
    }

    fn array(&mut self, start: usize, depth: usize) -> Result<Frame, Halt> {
        let Some(declared) = self.length("array", start)? else {
            return Ok(Frame::Array(None));
        };
        let limit = self.limits.max_args;
        let count = match usize::try_from(declared) {
            Ok(count) if count <= limit => count,
            _ => return invalid(start, ProtocolErrorKind::TooManyElements { declared, limit }),
        };
        if depth >= MAX_NESTING_DEPTH {
            return invalid(start, ProtocolErrorKind::TooDeep { limit: MAX_NESTING_DEPTH });
        }
        // The smallest frame is 3 bytes (`+\r\n`): never reserve for more than could be there.
        let mut items = Vec::with_capacity(count.min(self.rest().len() / 3));
        for _ in 0..count {
            items.push(self.frame(depth + 1)?);
        }
        Ok(Frame::Array(Some(items)))
    }

    /// An inline command: one line, ended by LF, split into arguments.
    fn inline(&mut self) -> Result<Frame, Halt> {
        let limit = self.limits.max_inline_bytes;
        let Some(newline) = self.buf.iter().take(limit + 1).position(|&b| b == b'\n') else {
            if self.buf.len() > limit {
                return invalid(0, ProtocolErrorKind::InlineTooLong { limit });
            }
            return Err(Halt::Incomplete);
        };
        let line = &self.buf[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = match split_inline(line) {
            Ok(args) => args,
            Err(kind) => return invalid(0, kind),
        };
        if args.len() > self.limits.max_args {
            let declared = i64::try_from(args.len()).unwrap_or(i64::MAX);
            return invalid(0, ProtocolErrorKind::TooManyElements { declared, limit: self.limits.max_args });
        }
        self.pos = newline + 1;
        Ok(Frame::Array(Some(args.into_iter().map(|arg| Frame::Bulk(Some(Bytes::from(arg)))).collect())))
    }
}

/// Whitespace as C's `isspace`, which Redis's `sdssplitargs` uses.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits an inline command line into arguments by Redis's `sdssplitargs` rules.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolErrorKind> {
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while line.get(pos).is_some_and(|&b| is_space(b)) {
            pos += 1;
        }
        if pos >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut quote_char: Option<u8> = None;
        loop {
            let current = line.get(pos).copied();
            let next = line.get(pos + 1).copied();
            match (quote_char, current) {
                (Some(_), None) => return Err(ProtocolErrorKind::UnbalancedQuotes),
                (None, None) => break,
                (Some(b'"'), Some(b'\\')) if next == Some(b'x') => {
                    let high = line.get(pos + 2).and_then(|&b| hex_value(b));
                    let low = line.get(pos + 3).and_then(|&b| hex_value(b));
                    if let (Some(high), Some(low)) = (high, low) {
                        arg.push(high * 16 + low);
                        pos += 3;
                    } else {
                        arg.push(b'x');
                        pos += 1;
                    }
                }
                (Some(b'"'), Some(b'\\')) if next.is_some() => {
                    arg.push(match next {
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'b') => 0x08,
                        Some(b'a') => 0x07,
                        Some(other) => other,
                        None => b'\\',
                    });
                    pos += 1;
                }
                (Some(b'\''), Some(b'\\')) if next == Some(b'\'') => {
                    arg.push(b'\'');
                    pos += 1;
                }
                (Some(open), Some(close)) if open == close => {
                    // A closing quote must end the argument.
                    if next.is_some_and(|b| !is_space(b)) {
                        return Err(ProtocolErrorKind::UnbalancedQuotes);
                    }
                    pos += 1;
                    break;
                }
                (Some(_), Some(byte)) => arg.push(byte),
                (None, Some(byte)) if is_space(byte) => break,
                (None, Some(quote @ (b'"' | b'\''))) => quote_char = Some(quote),
                (None, Some(byte)) => arg.push(byte),
            }
            pos += 1;
        }
        args.push(arg);
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).and_then(|digit| u8::try_from(digit).ok())
}

fn encode_line(type_byte: u8, text: &str, out: &mut Vec<u8>) {
    out.push(type_byte);
    // A CR or LF would end the line early and desynchronise the client.
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn push_length(length: usize, out: &mut Vec<u8>) {
    push_unsigned(length as u64, out);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(value: i64, out: &mut Vec<u8>) {
    if value < 0 {
        out.push(b'-');
    }
    push_unsigned(value.unsigned_abs(), out);
}

fn push_unsigned(mut value: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut out);
        out
    }

    fn parse_default(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        parse(buf, &Limits::default())
    }

    fn kind_of(buf: &[u8], limits: &Limits) -> ProtocolErrorKind {
        match parse(buf, limits) {
            Err(error) => error.kind,
            other => panic!("expected an error for {:?}, got {other:?}", buf.escape_ascii().to_string()),
        }
    }

    fn bulks(args: &[&str]) -> Frame {
        Frame::array(args.iter().map(|arg| Frame::bulk(arg.as_bytes().to_vec())).collect())
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            "[^\r\n]{0,20}".prop_map(Frame::Simple),
            "[^\r\n]{0,20}".prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            Just(Frame::Bulk(None)),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Frame::bulk),
            Just(Frame::Array(None)),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| proptest::collection::vec(inner, 0..6).prop_map(Frame::array))
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(frame in arb_frame()) {
            let bytes = encoded(&frame);
            prop_assert_eq!(parse_default(&bytes), Ok(Some((frame, bytes.len()))));
        }

        #[test]
        fn every_strict_prefix_is_incomplete(frame in arb_frame()) {
            let bytes = encoded(&frame);
            for end in 0..bytes.len() {
                prop_assert_eq!(parse_default(&bytes[..end]), Ok(None), "prefix of {} bytes", end);
            }
        }

        #[test]
        fn frames_in_a_row_parse_one_after_another(frames in proptest::collection::vec(arb_frame(), 1..5)) {
            let mut bytes = Vec::new();
            for frame in &frames {
                encode(frame, &mut bytes);
            }
            let mut offset = 0;
            for frame in frames {
                let (parsed, used) = parse_default(&bytes[offset..]).unwrap().unwrap();
                prop_assert_eq!(parsed, frame);
                offset += used;
            }
            prop_assert_eq!(offset, bytes.len());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, used))) = parse_default(&bytes) {
                prop_assert!(used > 0 && used <= bytes.len());
            }
        }

        #[test]
        fn random_bytes_after_a_type_byte_never_panic(
            type_byte in prop::sample::select(vec![b'+', b'-', b':', b'$', b'*']),
            tail in proptest::collection::vec(prop::sample::select(b"0123456789-*$:+\r\nab".to_vec()), 0..60),
        ) {
            let mut bytes = vec![type_byte];
            bytes.extend(tail);
            let limits = Limits { max_value_bytes: 64, max_args: 8, max_inline_bytes: 32, max_request_bytes: 256, ..Limits::default() };
            if let Ok(Some((_, used))) = parse(&bytes, &limits) {
                prop_assert!(used > 0 && used <= bytes.len());
            }
        }

        #[test]
        fn integers_parse_as_redis_prints_them(value in any::<i64>()) {
            prop_assert_eq!(parse_integer(value.to_string().as_bytes()), Some(value));
        }

        #[test]
        fn plain_inline_words_parse_as_bulk_strings(words in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9:_]{0,9}", 1..8)) {
            let line = format!("{}\r\n", words.join(" "));
            let expected = Frame::array(words.iter().map(|w| Frame::bulk(w.as_bytes().to_vec())).collect());
            prop_assert_eq!(parse_default(line.as_bytes()), Ok(Some((expected, line.len()))));
        }
    }

    #[test]
    fn declared_bulk_beyond_the_limit_is_refused_before_its_bytes_arrive() {
        let limits = Limits { max_value_bytes: 100, ..Limits::default() };
        assert_eq!(kind_of(b"$101\r\n", &limits), ProtocolErrorKind::BulkTooLarge { declared: 101, limit: 100 });
        assert_eq!(
            kind_of(b"*1\r\n$9223372036854775807\r\n", &limits),
            ProtocolErrorKind::BulkTooLarge { declared: i64::MAX, limit: 100 }
        );
        assert_eq!(parse(b"$100\r\n", &limits), Ok(None));
    }

    #[test]
    fn a_request_that_cannot_fit_max_request_bytes_is_refused_early() {
        let limits = Limits { max_value_bytes: 1000, max_request_bytes: 64, ..Limits::default() };
        assert_eq!(kind_of(b"*2\r\n$3\r\nSET\r\n$100\r\n", &limits), ProtocolErrorKind::RequestTooLarge { limit: 64 });
        // Many small elements: refused once the buffer reaches the limit without a whole frame.
        let mut many = b"*100\r\n".to_vec();
        while many.len() < 64 {
            many.extend_from_slice(b"$1\r\na\r\n");
        }
        assert_eq!(kind_of(&many, &limits), ProtocolErrorKind::RequestTooLarge { limit: 64 });
    }

    #[test]
    fn arrays_are_bounded_in_count_and_depth() {
        let limits = Limits { max_args: 3, ..Limits::default() };
        assert_eq!(kind_of(b"*4\r\n", &limits), ProtocolErrorKind::TooManyElements { declared: 4, limit: 3 });
        let deep = b"*1\r\n".repeat(MAX_NESTING_DEPTH + 1);
        assert_eq!(kind_of(&deep, &limits), ProtocolErrorKind::TooDeep { limit: MAX_NESTING_DEPTH });
        let allowed = b"*1\r\n".repeat(MAX_NESTING_DEPTH);
        assert_eq!(parse(&allowed, &limits), Ok(None));
    }

    #[test]
    fn malformed_frames_say_what_and_where() {
        let limits = Limits::default();
        let error = parse(b"*1\r\n$3\r\nabcd\r\n", &limits).unwrap_err();
        assert_eq!(error.offset, 11);
        assert_eq!(error.to_string(), "expected CRLF after bulk string data, got 'd\\r' (at byte 11 of the request)");
        assert_eq!(
            kind_of(b"$abc\r\n", &limits),
            ProtocolErrorKind::InvalidLength { what: "bulk", found: "abc".into() }
        );
        assert_eq!(kind_of(b"$-2\r\n", &limits), ProtocolErrorKind::InvalidLength { what: "bulk", found: "-2".into() });
        assert_eq!(kind_of(b"*1\r\n%3\r\n", &limits), ProtocolErrorKind::UnknownType { found: "%".into() });
        assert_eq!(kind_of(b":+1\r\n", &limits), ProtocolErrorKind::InvalidInteger { found: "+1".into() });
        assert_eq!(kind_of(b"+OK\nx", &limits), ProtocolErrorKind::BareLineFeed);
        assert_eq!(kind_of(b"+OK\rx", &limits), ProtocolErrorKind::MissingCrlf { what: "CR", found: "\\rx".into() });
        assert_eq!(kind_of(b"+\xff\r\n", &limits), ProtocolErrorKind::InvalidUtf8 { what: "simple string" });
        let small = Limits { max_inline_bytes: 8, ..Limits::default() };
        assert_eq!(kind_of(b"*123456789", &small), ProtocolErrorKind::LineTooLong { limit: 8 });
    }

    #[test]
    fn integers_are_as_strict_as_redis() {
        for bad in ["", "-", "+1", "01", "-0", " 1", "1 ", "9223372036854775808", "1e3", "0x1"] {
            assert_eq!(parse_integer(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_integer(b"0"), Some(0));
    }

    #[test]
    fn inline_commands_follow_redis_quoting() {
        let parsed = |line: &[u8]| parse_default(line).map(|found| found.map(|(frame, _)| frame));
        assert_eq!(parsed(b"PING\r\n"), Ok(Some(bulks(&["PING"]))));
        assert_eq!(parsed(b"set  a\tb\n"), Ok(Some(bulks(&["set", "a", "b"]))));
        assert_eq!(parsed(b"set k \"a b\\n\\x41\"\r\n"), Ok(Some(bulks(&["set", "k", "a b\nA"]))));
        assert_eq!(parsed(b"set k 'it\\'s'\r\n"), Ok(Some(bulks(&["set", "k", "it's"]))));
        assert_eq!(parsed(b"set k \"\"\r\n"), Ok(Some(bulks(&["set", "k", ""]))));
        assert_eq!(parsed(b"\r\n"), Ok(Some(Frame::array(vec![]))));
        assert_eq!(parsed(b"PING"), Ok(None));
        assert_eq!(kind_of(b"set k \"abc\r\n", &Limits::default()), ProtocolErrorKind::UnbalancedQuotes);
        assert_eq!(kind_of(b"set k \"a\"b\r\n", &Limits::default()), ProtocolErrorKind::UnbalancedQuotes);
        let small = Limits { max_inline_bytes: 8, max_args: 2, ..Limits::default() };
        assert_eq!(kind_of(b"PINGPINGPING", &small), ProtocolErrorKind::InlineTooLong { limit: 8 });
        assert_eq!(kind_of(b"a b c\r\n", &small), ProtocolErrorKind::TooManyElements { declared: 3, limit: 2 });
    }

    #[test]
    fn encoding_keeps_lines_whole() {
        assert_eq!(encoded(&Frame::error("ERR bad\r\nthing")), b"-ERR bad  thing\r\n");
        assert_eq!(encoded(&Frame::Integer(i64::MIN)), b":-9223372036854775808\r\n");
        assert_eq!(encoded(&Frame::array(vec![Frame::null(), Frame::Integer(0)])), b"*2\r\n$-1\r\n:0\r\n");
    }
}
