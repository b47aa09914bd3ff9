//! The admin protocol's replies, typed: one struct per request ([`crate::replication::wire::AdminRequest`]),
//! as a node writes them and the admin CLI reads them.
//!
//! ## Invariants
//! - A reply missing a field is an error at the reader, never a default: an absent `lsn` must
//!   not read as LSN 0 (a wait that passes at once), an absent digest as `""` (two equal
//!   digests). Optional values are present as `null`; [`required`] makes serde insist on them.
//! - Replies to primitives refuse unknown fields (a reply from another build is noticed);
//!   [`StatusView`] reads only what the orchestrator needs, so a node may add to its status.

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::engine::{Promotion, Rejoined};
use crate::storage::journal::{Epoch, HistoryEntry, Lsn};
use crate::storage::meta::Role;

/// An `Option` field that must be present (as `null` when empty): without this serde reads a
/// missing `Option` as `None`.
pub fn required<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

/// Reads a reply body as `T`; the error names the request and what is wrong with the body.
pub fn read<T: serde::de::DeserializeOwned>(what: &str, body: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(body).map_err(|e| format!("the reply to {what} is not as this build expects it: {e}"))
}

/// Serialises a reply body (plain data: cannot fail).
pub fn body<T: Serialize>(reply: &T) -> serde_json::Value {
    serde_json::to_value(reply).unwrap_or_else(|e| serde_json::json!({ "error": format!("unserialisable reply: {e}") }))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainReply {
    pub lsn: Lsn,
    pub digest: String,
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeReply {
    pub resumed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoteReply {
    pub lsn: Lsn,
    pub applied_lsn: Lsn,
    pub digest: String,
    pub already: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteReply {
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    /// Everything the node had received from the old primary.
    pub last_received_lsn: Lsn,
    /// The old primary's last position the node heard of (batches and heartbeats carry it).
    pub last_heard_lsn: Lsn,
    /// The estimate of transactions the old primary held that the node never received.
    pub not_received: u64,
    pub already: bool,
}

impl PromoteReply {
    pub fn from_promotion(promotion: &Promotion, already: bool) -> PromoteReply {
        PromoteReply {
            epoch: promotion.epoch,
            first_lsn: promotion.first_lsn,
            last_received_lsn: promotion.last_received_lsn,
            last_heard_lsn: promotion.last_heard_lsn,
            not_received: promotion.not_received(),
            already,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceReply {
    pub role: Role,
    pub epoch: Epoch,
}

/// `hotpair reload` on one node: what its pair file changes, and whether it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadReply {
    pub node: String,
    /// The pair file the node re-read: the one it was started with.
    pub path: String,
    /// The digest the node ran before.
    pub previous_digest: String,
    /// The digest of the file as read now (what the node runs once applied).
    pub digest: String,
    /// The keys that differ (all of them live: a restart key is a refusal).
    pub changed: Vec<String>,
    /// `false` for the check.
    pub applied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitAppliedReply {
    pub applied_lsn: Lsn,
    pub digest: String,
}

/// A rejoin's plan (the dry run) or what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejoinReply {
    pub node: String,
    pub divergence_lsn: Lsn,
    pub orphaned: u64,
    pub needs_from: Lsn,
    pub primary_first_available: Lsn,
    pub shippable: bool,
    /// An earlier rejoin behind the same primary epoch and what it set aside.
    #[serde(deserialize_with = "required")]
    pub earlier: Option<Rejoined>,
    /// `null` for a dry run.
    #[serde(deserialize_with = "required")]
    pub done: Option<RejoinDone>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejoinDone {
    #[serde(deserialize_with = "required")]
    pub orphans_file: Option<String>,
    pub rewound: u64,
    pub full_copy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyReply {
    pub lsn: Lsn,
    pub digest: String,
    pub source: String,
    pub applied_lsn: Lsn,
    /// `null` unless `full` was asked.
    #[serde(deserialize_with = "required")]
    pub full: Option<FullScan>,
}

/// A full recomputation of the digest; `at_lsn` is `null` when the store moved during the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullScan {
    #[serde(deserialize_with = "required")]
    pub at_lsn: Option<Lsn>,
    #[serde(deserialize_with = "required")]
    pub digest: Option<String>,
    #[serde(deserialize_with = "required")]
    pub keys: Option<u64>,
    #[serde(deserialize_with = "required")]
    pub matches: Option<bool>,
    #[serde(deserialize_with = "required")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstAvailableReply {
    pub first_available: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetProgressReply {
    pub saved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptPeerReply {
    pub peer_incarnation: Uuid,
}

/// What the orchestrator reads of a node's `status` (the node shows more; see
/// `node::status`). Every field must be there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub node: String,
    pub role: Role,
    pub epoch: Epoch,
    /// Last committed (primary) or applied (backup).
    pub lsn: Lsn,
    pub last_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub digest: String,
    pub lag_records: u64,
    pub lag_ms: u64,
    pub remote_journal: String,
    pub replicating: bool,
    pub following: bool,
    /// A restarted primary waiting for its peer's word (absent from older nodes' status).
    #[serde(default)]
    pub awaiting_peer: bool,
    #[serde(deserialize_with = "required")]
    pub failure: Option<String>,
    /// `null` on a node without a pipeline.
    #[serde(deserialize_with = "required")]
    pub writes: Option<WritesView>,
    pub history: Vec<HistoryEntry>,
    pub incarnation: Uuid,
    #[serde(deserialize_with = "required")]
    pub peer_incarnation: Option<Uuid>,
    pub peer: PeerView,
    #[serde(deserialize_with = "required")]
    pub disk_free_bytes: Option<u64>,
    /// The orchestration in flight, as a run saved it.
    #[serde(deserialize_with = "required")]
    pub orchestration: Option<serde_json::Value>,
    #[serde(deserialize_with = "required")]
    pub promotion: Option<Promotion>,
    #[serde(deserialize_with = "required")]
    pub rejoined: Option<Rejoined>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritesView {
    pub accepting: bool,
    #[serde(deserialize_with = "required")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub connected: bool,
    /// As primary: how far the peer acknowledged as durable in this epoch.
    pub acknowledged_lsn: Lsn,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reply_missing_a_field_is_an_error_never_a_default() {
        // A drain reply without its LSN or digest once read as LSN 0 and "": the wait passed at
        // once and two empty digests compared equal.
        let whole = json!({ "lsn": 40, "digest": "ab", "lease_ms": 3000 });
        assert_eq!(read::<DrainReply>("drain", whole).unwrap().lsn, 40);
        for missing in ["lsn", "digest", "lease_ms"] {
            let mut body = json!({ "lsn": 40, "digest": "ab", "lease_ms": 3000 });
            body.as_object_mut().unwrap().remove(missing);
            let err = read::<DrainReply>("drain", body).unwrap_err();
            assert!(err.contains(missing) && err.contains("drain"), "{err}");
        }
        // An optional value must be there as null, not left out.
        let done = json!({ "orphans_file": null, "rewound": 0, "full_copy": false });
        assert_eq!(read::<RejoinDone>("rejoin", done).unwrap().orphans_file, None);
        let err = read::<RejoinDone>("rejoin", json!({ "rewound": 0, "full_copy": false })).unwrap_err();
        assert!(err.contains("orphans_file"), "{err}");
        // A field this build does not know is refused too.
        let err = read::<ResumeReply>("resume", json!({ "resumed": true, "extra": 1 })).unwrap_err();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn a_request_missing_a_field_or_with_an_unknown_one_is_refused() {
        use crate::replication::wire::AdminRequest;
        let promote = json!({ "op": "promote", "op_id": Uuid::nil(), "epoch": 1, "expect_lsn": null });
        assert!(matches!(
            serde_json::from_value::<AdminRequest>(promote),
            Ok(AdminRequest::Promote { expect_lsn: None, .. })
        ));
        // Without expect_lsn a switchover's promote would verify nothing: it must be said.
        let without = json!({ "op": "promote", "op_id": Uuid::nil(), "epoch": 1 });
        assert!(serde_json::from_value::<AdminRequest>(without).is_err());
        let unknown = json!({ "op": "resume", "op_id": Uuid::nil(), "epoch": 1, "lease_ms": 5 });
        assert!(serde_json::from_value::<AdminRequest>(unknown).is_err());
        let status = serde_json::to_value(AdminRequest::Status).unwrap();
        assert_eq!(serde_json::from_value::<AdminRequest>(status).unwrap(), AdminRequest::Status);
    }

    #[test]
    fn a_status_without_lag_is_an_error_not_zero_lag() {
        let status = json!({
            "node": "b", "role": "backup", "epoch": 1, "lsn": 5, "last_lsn": 5, "applied_lsn": 5,
            "digest": "00", "lag_records": 0, "lag_ms": 12, "remote_journal": "active",
            "replicating": true, "following": true, "failure": null, "writes": null,
            "history": [{ "epoch": 1, "first_lsn": 1, "primary": "a" }],
            "incarnation": Uuid::nil(), "peer_incarnation": null,
            "peer": { "name": "a", "connected": true, "acknowledged_lsn": 0 },
            "disk_free_bytes": 1, "orchestration": null, "promotion": null, "rejoined": null,
            "something_newer": 1,
        });
        assert_eq!(read::<StatusView>("status", status.clone()).unwrap().lag_ms, 12);
        let mut without = status;
        without.as_object_mut().unwrap().remove("lag_ms");
        assert!(read::<StatusView>("status", without).unwrap_err().contains("lag_ms"));
    }
}
