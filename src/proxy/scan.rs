//! Where one RESP value ends, in a buffer that grows as bytes arrive — without parsing it into
//! frames and without scanning it again from the start at each read.
//!
//! The proxy forwards requests and replies as the bytes they came in; it only needs their
//! boundaries (and, for a request, its command name, which [`crate::resp`] parses once the
//! request is whole). A large reply arriving in many reads costs one pass, not one per read.
//!
//! ## Bounds
//! - A bulk string longer than [`MAX_BULK_BYTES`], an aggregate of more than
//!   [`MAX_ELEMENTS`], nesting deeper than [`MAX_DEPTH`] or a line longer than
//!   [`MAX_LINE_BYTES`] is an error: the stream cannot be followed any further.
//! - RESP3 types are recognised too, so a client that talks RESP3 to a server that accepted
//!   `HELLO 3` still has its replies delimited.

/// Longest bulk string followed (Redis's own `proto-max-bulk-len`).
pub const MAX_BULK_BYTES: i64 = 512 * 1024 * 1024;
/// Most elements in one aggregate.
pub const MAX_ELEMENTS: i64 = 1 << 32;
/// Deepest nesting followed.
pub const MAX_DEPTH: usize = 32;
/// Longest header or inline line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    #[error("bad length {0:?}")]
    BadLength(String),
    #[error("a length over the proxy's bound ({0})")]
    TooLarge(i64),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// Scans one value at a time; after a whole value, it starts afresh at the next byte.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Where scanning resumes: the start of the next element not yet whole.
    pos: usize,
    /// Elements still missing in each open aggregate, innermost last.
    open: Vec<i64>,
    /// An inline request (a line of words, as telnet sends) may start a value.
    allow_inline: bool,
}

impl Scanner {
    /// A scanner for requests (inline commands allowed) or replies.
    pub fn new(allow_inline: bool) -> Scanner {
        Scanner { pos: 0, open: Vec::new(), allow_inline }
    }

    /// Scans `buf`, which starts with the value being scanned and holds every byte given
    /// before. `Some(end)`: the value is `buf[..end]` (the caller removes it; the scanner is
    /// ready for the next). `None`: more bytes are needed.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ScanError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else { return Ok(None) };
            if self.pos == 0 && self.allow_inline && !is_type(kind) {
                return match find_lf(buf, 0) {
                    Some(lf) => Ok(Some(self.done(lf + 1))),
                    None if buf.len() > MAX_LINE_BYTES => Err(ScanError::LineTooLong),
                    None => Ok(None),
                };
            }
            let Some(cr) = find_crlf(buf, self.pos + 1) else {
                if buf.len() - self.pos > MAX_LINE_BYTES {
                    return Err(ScanError::LineTooLong);
                }
                return Ok(None);
            };
            let line = &buf[self.pos + 1..cr];
            let after = cr + 2;
            match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => self.pos = after,
                b'$' | b'=' | b'!' => {
                    let length = length(line)?;
                    if length < 0 {
                        self.pos = after;
                    } else {
                        if length > MAX_BULK_BYTES {
                            return Err(ScanError::TooLarge(length));
                        }
                        let end = after + length as usize + 2;
                        if buf.len() < end {
                            // The header is read again next time: a few bytes, not the body.
                            return Ok(None);
                        }
                        self.pos = end;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let count = length(line)?;
                    if count > MAX_ELEMENTS {
                        return Err(ScanError::TooLarge(count));
                    }
                    self.pos = after;
                    let children = match kind {
                        b'%' => count.saturating_mul(2),
                        // An attribute map comes before the value it is about.
                        b'|' => count.saturating_mul(2).saturating_add(1),
                        _ => count,
                    };
                    if children > 0 {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(ScanError::TooDeep);
                        }
                        self.open.push(children);
                        continue;
                    }
                }
                other => return Err(ScanError::UnknownType(other)),
            }
            // One element is whole: count it against the aggregates it closes.
            while let Some(missing) = self.open.last_mut() {
                *missing -= 1;
                if *missing > 0 {
                    break;
                }
                self.open.pop();
            }
            if self.open.is_empty() {
                let end = self.pos;
                return Ok(Some(self.done(end)));
            }
        }
    }

    fn done(&mut self, end: usize) -> usize {
        self.pos = 0;
        self.open.clear();
        end
    }
}

fn is_type(byte: u8) -> bool {
    matches!(
        byte,
        b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b'#' | b',' | b'(' | b'=' | b'!' | b'~' | b'>' | b'%' | b'|'
    )
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(offset) = buf.get(at..)?.iter().position(|&b| b == b'\r') {
        let cr = at + offset;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => at = cr + 1,
            None => return None,
        }
    }
    None
}

fn find_lf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.iter().position(|&b| b == b'\n').map(|i| from + i)
}

fn length(line: &[u8]) -> Result<i64, ScanError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|&n| n >= -1)
        .ok_or_else(|| ScanError::BadLength(String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{encode, Frame};

    fn whole(bytes: &[u8]) -> Option<usize> {
        Scanner::new(false).scan(bytes).unwrap()
    }

    #[test]
    fn every_value_ends_where_it_ends_and_no_prefix_is_whole() {
        let frames = [
            Frame::ok(),
            Frame::error("TRYAGAIN draining"),
            Frame::Integer(-42),
            Frame::null(),
            Frame::bulk("a\r\nb"),
            Frame::Array(None),
            Frame::array(vec![]),
            Frame::array(vec![
                Frame::bulk("x"),
                Frame::array(vec![Frame::Integer(1), Frame::array(vec![])]),
                Frame::null(),
            ]),
        ];
        for frame in frames {
            let mut bytes = Vec::new();
            encode(&frame, &mut bytes);
            assert_eq!(whole(&bytes), Some(bytes.len()), "{frame:?}");
            // Fed a byte at a time to one scanner: whole exactly at the end.
            let mut scanner = Scanner::new(false);
            for cut in 1..bytes.len() {
                assert_eq!(scanner.scan(&bytes[..cut]).unwrap(), None, "{frame:?} cut at {cut}");
            }
            assert_eq!(scanner.scan(&bytes).unwrap(), Some(bytes.len()));
            // A value followed by another: the first one's end.
            let mut two = bytes.clone();
            two.extend_from_slice(b"+OK\r\n");
            assert_eq!(whole(&two), Some(bytes.len()));
        }
    }

    #[test]
    fn resp3_and_inline() {
        assert_eq!(whole(b"%1\r\n+a\r\n:1\r\n"), Some(12));
        assert_eq!(whole(b"|1\r\n+k\r\n+v\r\n:7\r\n"), Some(16));
        assert_eq!(whole(b"_\r\n"), Some(3));
        assert_eq!(Scanner::new(true).scan(b"PING\r\nGET").unwrap(), Some(6));
        assert_eq!(Scanner::new(true).scan(b"PING").unwrap(), None);
    }

    #[test]
    fn garbage_and_bounds_are_errors() {
        assert_eq!(Scanner::new(false).scan(b"?x\r\n"), Err(ScanError::UnknownType(b'?')));
        assert!(matches!(Scanner::new(false).scan(b"$x\r\n"), Err(ScanError::BadLength(_))));
        assert!(matches!(Scanner::new(false).scan(b"$-5\r\n"), Err(ScanError::BadLength(_))));
        assert!(matches!(Scanner::new(false).scan(b"$99999999999\r\n"), Err(ScanError::TooLarge(_))));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(Scanner::new(false).scan(deep.as_bytes()), Err(ScanError::TooDeep));
        let long = vec![b'+'; MAX_LINE_BYTES + 2];
        assert_eq!(Scanner::new(false).scan(&long), Err(ScanError::LineTooLong));
    }
}
