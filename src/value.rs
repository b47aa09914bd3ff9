//! How a client's value is kept in the store: the bytes plus an optional expiry time.
//!
//! ## Format (first byte is the tag)
//! ```text
//! 0x00 ‖ value                      no expiry
//! 0x01 ‖ expires_at_ms (u64 LE) ‖ value
//! ```
//! The expiry is an absolute time stamped by the primary, so both nodes hold the same bytes and
//! the same digest. An expired key still exists in the store until the primary journals its
//! deletion; reads treat it as absent from the moment it expires, on either node.

/// A decoded stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub expires_at_ms: Option<u64>,
    pub data: Vec<u8>,
}

const TAG_PLAIN: u8 = 0;
const TAG_EXPIRING: u8 = 1;

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 9);
        match self.expires_at_ms {
            None => out.push(TAG_PLAIN),
            Some(at) => {
                out.push(TAG_EXPIRING);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes stored bytes; `None` if they are not in this format (a damaged store).
    pub fn decode(bytes: &[u8]) -> Option<StoredValue> {
        match bytes.split_first()? {
            (&TAG_PLAIN, rest) => Some(StoredValue { expires_at_ms: None, data: rest.to_vec() }),
            (&TAG_EXPIRING, rest) if rest.len() >= 8 => {
                let mut at = [0u8; 8];
                at.copy_from_slice(&rest[..8]);
                Some(StoredValue { expires_at_ms: Some(u64::from_le_bytes(at)), data: rest[8..].to_vec() })
            }
            _ => None,
        }
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_expires() {
        for value in [
            StoredValue { expires_at_ms: None, data: b"v".to_vec() },
            StoredValue { expires_at_ms: Some(1000), data: Vec::new() },
        ] {
            assert_eq!(StoredValue::decode(&value.encode()), Some(value.clone()));
        }
        let expiring = StoredValue { expires_at_ms: Some(1000), data: b"x".to_vec() };
        assert!(expiring.is_live(999) && !expiring.is_live(1000));
        assert_eq!(StoredValue::decode(&[7, 1, 2]), None);
        assert_eq!(StoredValue::decode(&[]), None);
    }
}
