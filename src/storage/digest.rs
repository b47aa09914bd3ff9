//! The digest: a 128-bit, order-independent fingerprint of the whole key space.
//!
//! ## Definition
//! `digest = Σ term(key, value)  (mod 2^128)` over every stored pair, where
//! `term(k, v) = xxh3_128(len(k) as u32 LE ‖ k ‖ v)`. The length prefix keeps `("ab","c")` and
//! `("a","bc")` apart. The empty store has digest 0.
//!
//! ## Why a sum
//! A sum is a multiset hash: it does not depend on the order keys were written or scanned in, and
//! a change of one key updates it in O(1) — subtract the old term, add the new one — which is what
//! lets every record carry the digest after it (invariant 3, "same LSN, same state"). XOR would also
//! be order-independent but cancels equal terms; a sum does not.
//!
//! ## Caveat
//! xxh3 is not a cryptographic hash. The digest detects divergence from bugs, bit rot and
//! operator error; it is not a defence against a client that crafts colliding writes.

use std::fmt;

/// A 128-bit digest of a key space. `Digest::EMPTY` is the digest of the empty store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub u128);

impl Digest {
    pub const EMPTY: Digest = Digest(0);

    /// The term one stored pair contributes.
    pub fn term(key: &[u8], value: &[u8]) -> u128 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(key);
        hasher.update(value);
        hasher.digest128()
    }

    /// The digest after `key` changes from `before` to `after` (`None` = absent).
    #[must_use]
    pub fn updated(self, key: &[u8], before: Option<&[u8]>, after: Option<&[u8]>) -> Digest {
        let mut sum = self.0;
        if let Some(old) = before {
            sum = sum.wrapping_sub(Self::term(key, old));
        }
        if let Some(new) = after {
            sum = sum.wrapping_add(Self::term(key, new));
        }
        Digest(sum)
    }

    /// Adds one stored pair (used by the full-scan recomputation).
    #[must_use]
    pub fn with_pair(self, key: &[u8], value: &[u8]) -> Digest {
        Digest(self.0.wrapping_add(Self::term(key, value)))
    }

    pub fn to_le_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    pub fn from_le_bytes(bytes: [u8; 16]) -> Digest {
        Digest(u128::from_le_bytes(bytes))
    }

    /// 32 lowercase hex digits, most significant first (the form `status` and dumps print).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    pub fn from_hex(text: &str) -> Option<Digest> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Digest)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::from_hex(&text).ok_or_else(|| serde::de::Error::custom(format!("not a 32-digit hex digest: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_reversible_and_order_independent() {
        let a = Digest::EMPTY.updated(b"k1", None, Some(b"v1"));
        let ab = a.updated(b"k2", None, Some(b"v2"));
        let ba = Digest::EMPTY.updated(b"k2", None, Some(b"v2")).updated(b"k1", None, Some(b"v1"));
        assert_eq!(ab, ba);
        assert_eq!(ab.updated(b"k2", Some(b"v2"), None), a);
        assert_ne!(Digest::EMPTY.with_pair(b"ab", b"c"), Digest::EMPTY.with_pair(b"a", b"bc"));
    }

    #[test]
    fn hex_round_trip() {
        let d = Digest(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("xyz"), None);
    }
}
