//! How a client's value is kept in the store: its type, its data and an optional expiry time.
//!
//! ## Format (first byte is the tag)
//! ```text
//! 0x00 ‖ bytes                                   string, no expiry
//! 0x01 ‖ expires_at_ms (u64 LE) ‖ bytes          string with expiry
//! 0x02 ‖ hash                                    hash, no expiry
//! 0x03 ‖ expires_at_ms (u64 LE) ‖ hash           hash with expiry
//! hash: u32 field count, then per field: u32 length, field, u32 length, value
//! ```
//! Bit 0 of the tag says "an expiry follows"; the bits above it are the type. Tags 0 and 1 are
//! the only ones journals written before hashes existed hold, and they read as they always did.
//!
//! A whole hash is one stored value (see `docs/commands.md`, "Store layout"): one key, one op in
//! a record, one term in the digest, one before-image to rewind. Fields keep their insertion
//! order, as a small Redis hash (listpack) does; a field lookup is a linear search.
//!
//! The expiry is an absolute time stamped by the primary, so both nodes hold the same bytes and
//! the same digest. An expired key still exists in the store until the primary journals its
//! deletion; reads treat it as absent from the moment it expires, on either node.

/// A decoded stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub expires_at_ms: Option<u64>,
    pub data: Data,
}

/// The data of a key, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    String(Vec<u8>),
    /// Field/value pairs in insertion order; field names are unique.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
}

const FLAG_EXPIRY: u8 = 1;
const TYPE_STRING: u8 = 0;
const TYPE_HASH: u8 = 2;

impl Data {
    /// The name `TYPE` answers.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::String(_) => "string",
            Data::Hash(_) => "hash",
        }
    }
}

impl StoredValue {
    pub fn string(data: Vec<u8>, expires_at_ms: Option<u64>) -> StoredValue {
        StoredValue { expires_at_ms, data: Data::String(data) }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (type_bits, payload_len) = match &self.data {
            Data::String(bytes) => (TYPE_STRING, bytes.len()),
            Data::Hash(fields) => (TYPE_HASH, 4 + fields.iter().map(|(f, v)| 8 + f.len() + v.len()).sum::<usize>()),
        };
        let mut out = Vec::with_capacity(payload_len + 9);
        match self.expires_at_ms {
            None => out.push(type_bits),
            Some(at) => {
                out.push(type_bits | FLAG_EXPIRY);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        match &self.data {
            Data::String(bytes) => out.extend_from_slice(bytes),
            Data::Hash(fields) => {
                out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
                for (field, value) in fields {
                    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
                    out.extend_from_slice(field);
                    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    out.extend_from_slice(value);
                }
            }
        }
        out
    }

    /// Decodes stored bytes; `None` if they are not in this format (a damaged store).
    pub fn decode(bytes: &[u8]) -> Option<StoredValue> {
        let (&tag, rest) = bytes.split_first()?;
        let (expires_at_ms, rest) = if tag & FLAG_EXPIRY != 0 {
            let at: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            (Some(u64::from_le_bytes(at)), &rest[8..])
        } else {
            (None, rest)
        };
        let data = match tag & !FLAG_EXPIRY {
            TYPE_STRING => Data::String(rest.to_vec()),
            TYPE_HASH => Data::Hash(decode_hash(rest)?),
            _ => return None,
        };
        Some(StoredValue { expires_at_ms, data })
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// Whether stored bytes carry an expiry, and when, without decoding the data (`None` for no
/// expiry or bytes of no known format).
pub fn expiry_of(bytes: &[u8]) -> Option<u64> {
    let (&tag, rest) = bytes.split_first()?;
    if tag & FLAG_EXPIRY == 0 || !matches!(tag & !FLAG_EXPIRY, TYPE_STRING | TYPE_HASH) {
        return None;
    }
    Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?))
}

fn decode_hash(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        bytes = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    // Each field takes at least 8 bytes: refuse a count the bytes cannot hold before allocating.
    let mut fields = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let field = take(len)?.to_vec();
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let value = take(len)?.to_vec();
        fields.push((field, value));
    }
    if !bytes.is_empty() {
        return None;
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_expires() {
        for value in [
            StoredValue::string(b"v".to_vec(), None),
            StoredValue::string(Vec::new(), Some(1000)),
            StoredValue { expires_at_ms: None, data: Data::Hash(vec![(b"f".to_vec(), b"v".to_vec())]) },
            StoredValue { expires_at_ms: Some(5), data: Data::Hash(Vec::new()) },
        ] {
            assert_eq!(StoredValue::decode(&value.encode()), Some(value.clone()));
            assert_eq!(expiry_of(&value.encode()), value.expires_at_ms);
        }
        let expiring = StoredValue::string(b"x".to_vec(), Some(1000));
        assert!(expiring.is_live(999) && !expiring.is_live(1000));
        assert_eq!(StoredValue::decode(&[7, 1, 2]), None);
        assert_eq!(StoredValue::decode(&[]), None);
        assert_eq!(StoredValue::decode(&[2, 1, 0, 0, 0]), None, "a field the bytes do not hold");
        assert_eq!(StoredValue::decode(&[2, 0, 0, 0, 0, 9]), None, "trailing bytes");
    }

    #[test]
    fn the_first_format_still_reads() {
        // Bytes as journals written before hashes existed hold them.
        assert_eq!(StoredValue::decode(b"\x00abc"), Some(StoredValue::string(b"abc".to_vec(), None)));
        let mut expiring = vec![1u8];
        expiring.extend_from_slice(&42u64.to_le_bytes());
        expiring.extend_from_slice(b"x");
        assert_eq!(StoredValue::decode(&expiring), Some(StoredValue::string(b"x".to_vec(), Some(42))));
    }

    fn arb_value() -> impl Strategy<Value = StoredValue> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..20);
        let data = prop_oneof![
            bytes().prop_map(Data::String),
            proptest::collection::vec((bytes(), bytes()), 0..6).prop_map(Data::Hash),
        ];
        (proptest::option::of(any::<u64>()), data).prop_map(|(expires_at_ms, data)| StoredValue { expires_at_ms, data })
    }

    proptest! {
        #[test]
        fn every_value_round_trips(value in arb_value()) {
            prop_assert_eq!(StoredValue::decode(&value.encode()), Some(value));
        }

        #[test]
        fn no_bytes_make_decode_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = StoredValue::decode(&bytes);
            let _ = expiry_of(&bytes);
        }
    }
}
