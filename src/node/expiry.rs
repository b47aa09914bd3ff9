//! Active expiry: the primary journals the deletion of keys whose time to live has passed.
//!
//! Reads treat an expired key as absent on either node from the moment it expires
//! ([`crate::storage::value`]); this task removes it for good, so that it stops taking space and
//! counting in `DBSIZE`. It walks the store in key order, one slice per tick, and deletes the
//! slice's expired keys through the pipeline like a client's `DEL`: the deletion is journaled,
//! shipped and applied on the backup, and both digests move together.
//!
//! ## Invariants
//! - Only the primary deletes (only it has a pipeline); the backup gets the deletions as records.
//! - Inside the transaction each key is read again (through the pipeline's pending writes) and
//!   deleted only if it is still expired: a `SET` that replaced it since the scan wins.
//! - Nothing is deleted while writes are refused (draining, fenced, not yet confirmed by the
//!   peer, disk low): the commit is refused and the keys are found again on a later pass.
//! - Bounded work: a tick scans at most [`SLICES_PER_TICK`] slices of [`SLICE`] keys, and goes
//!   on to the next slice only while a quarter or more of the last one had expired (as Redis
//!   does); one transaction carries at most [`MAX_TXN_KEYS`] keys or about [`MAX_TXN_BYTES`].
//!   A full pass over N keys takes about N / (SLICE × 10) seconds when few keys expire.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::kv::pipeline::{CommitError, Pipeline};
use crate::storage::meta::Role;
use crate::storage::value::StoredValue;
use crate::Error;

const TICK: Duration = Duration::from_millis(100);
/// Keys read from the store per slice.
pub const SLICE: usize = 1000;
/// Most slices per tick, when they keep finding expired keys.
pub const SLICES_PER_TICK: usize = 10;
/// Most keys deleted by one transaction (one journal record).
pub const MAX_TXN_KEYS: usize = 256;
/// About the most bytes of expired values (the records' before-images) in one transaction.
pub const MAX_TXN_BYTES: usize = 1 << 20;

pub async fn run(node: Arc<Node>) -> Result<(), Error> {
    let mut shutdown = node.shutdown.subscribe();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(TICK) => {}
        }
        let Some(pipeline) = node.pipeline().filter(|_| node.role() == Role::Primary) else {
            cursor = None;
            continue;
        };
        for _ in 0..SLICES_PER_TICK {
            let (store, after) = (node.store.clone(), cursor.clone());
            let slice = match tokio::task::spawn_blocking(move || store.scan_after(after.as_deref(), SLICE)).await {
                Ok(Ok(slice)) => slice,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "active expiry: reading the store");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "active expiry: the scan task failed");
                    break;
                }
            };
            let now_ms = crate::clock::now_ms();
            cursor = if slice.len() < SLICE { None } else { slice.last().map(|(key, _)| key.clone()) };
            let expired: Vec<(Vec<u8>, usize)> = slice
                .iter()
                .filter(|(_, value)| StoredValue::decode(value).is_some_and(|v| !v.is_live(now_ms)))
                .map(|(key, value)| (key.clone(), value.len()))
                .collect();
            let mostly_expired = expired.len() * 4 >= slice.len() && !expired.is_empty();
            match delete_expired(&pipeline, &expired, now_ms) {
                Ok(0) => {}
                Ok(deleted) => {
                    node.metrics.note_expired(deleted as u64);
                    tracing::debug!(deleted, "active expiry: deleted expired keys");
                }
                Err(err) => {
                    tracing::debug!(error = %err, "active expiry: not deleting now");
                    break;
                }
            }
            if !mostly_expired || cursor.is_none() {
                break;
            }
        }
    }
}

/// Deletes those of `keys` (with their stored sizes) that are still expired at `now_ms`, in
/// transactions of at most [`MAX_TXN_KEYS`] keys or about [`MAX_TXN_BYTES`] bytes. Returns
/// how many were deleted.
fn delete_expired(pipeline: &Pipeline, keys: &[(Vec<u8>, usize)], now_ms: u64) -> Result<usize, CommitError> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut bytes = 0;
        let take = rest
            .iter()
            .take(MAX_TXN_KEYS)
            .take_while(|(_, size)| {
                bytes += size;
                bytes <= MAX_TXN_BYTES
            })
            .count()
            .max(1);
        let (chunk, after) = rest.split_at(take);
        let (_, count) = pipeline.commit(now_ms, |txn| {
            let mut count = 0;
            for (key, _) in chunk {
                let still_expired = txn
                    .get(key)?
                    .is_some_and(|stored| StoredValue::decode(&stored).is_some_and(|v| !v.is_live(now_ms)));
                if still_expired {
                    txn.delete(key.clone());
                    count += 1;
                }
            }
            Ok(count)
        })?;
        deleted += count;
        rest = after;
    }
    Ok(deleted)
}
