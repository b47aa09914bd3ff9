//! Glob patterns as Redis matches them (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`
//! and `\x` escapes, byte for byte. Used by `KEYS`, `SCAN … MATCH` and `HSCAN … MATCH`.
//!
//! Iterative with one backtrack point per star, so a pattern of many stars costs
//! O(pattern × text), not exponential time (Redis bounds its recursion instead).

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last star: (pattern index after it, text index it swallowed up to).
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                // Consecutive stars are one star.
                while pattern.get(p) == Some(&b'*') {
                    p += 1;
                }
                resume = Some((p, t));
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&byte) => (byte == text[t]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match resume {
                Some((after_star, swallowed)) => {
                    p = after_star;
                    t = swallowed + 1;
                    resume = Some((after_star, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&byte| byte == b'*')
}

/// Matches `byte` against the class starting at `pattern[start] == b'['`; the pattern index
/// after the class if it matches. An unclosed class runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], start: usize, byte: u8) -> Option<usize> {
    let mut p = start + 1;
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            matched |= pattern[p + 1] == byte;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' {
            let (low, high) = (pattern[p].min(pattern[p + 2]), pattern[p].max(pattern[p + 2]));
            matched |= (low..=high).contains(&byte);
            p += 3;
        } else {
            matched |= pattern[p] == byte;
            p += 1;
        }
    }
    // Past the closing bracket (or at the end of an unclosed class).
    let after = (p + 1).min(pattern.len());
    (matched != negate).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_match_as_redis_does() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hbllo"),
            ("h\\*llo", "h*llo"),
            ("user:*:name", "user:42:name"),
            ("a**b", "ab"),
            ("[\\]]", "]"),
        ];
        for (pattern, text) in yes {
            assert!(matches(pattern.as_bytes(), text.as_bytes()), "{pattern} should match {text}");
        }
        let no = [("h?llo", "hllo"), ("h[^e]llo", "hello"), ("h[a-b]llo", "hcllo"), ("abc", "abcd"), ("a*c", "ab")];
        for (pattern, text) in no {
            assert!(!matches(pattern.as_bytes(), text.as_bytes()), "{pattern} should not match {text}");
        }
        let many_stars = [b'*'; 10_000];
        assert!(!matches(&[&many_stars[..], b"x"].concat(), b"appendonly"));
    }
}
