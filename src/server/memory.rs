//! The data port's memory for clients: one budget for every connection's buffers.
//!
//! ## Job
//! A client can make the server hold memory two ways: by sending a request slowly (its bytes wait
//! in the connection's read buffer until the request is whole) and by asking for a large reply
//! (`MGET` of many large values). Each is bounded per connection (`max_request_bytes`,
//! `max_reply_bytes`), but a thousand connections each at their bound would still be tens of
//! GiB. [`ClientMemory`] is the bound across all of them, as Redis's `maxmemory-clients`:
//! every connection holds a [`Reservation`] for what its buffers hold beyond
//! [`FREE_BYTES_PER_CONNECTION`], and a reservation that cannot grow is refused — the connection
//! asking for more is told so (a large reply becomes an error; a request still arriving closes
//! its connection), and every other connection carries on.
//!
//! ## Invariants
//! - The bytes reserved never exceed the limit: growth is one compare-and-swap that checks it.
//! - A reservation gives back what it holds when it shrinks or is dropped, whatever the path
//!   (error, disconnect, shutdown).
//! - Small buffers never touch the shared counter: the first [`FREE_BYTES_PER_CONNECTION`] of a
//!   connection's input and of its output are not counted (with 1024 connections that is at
//!   most 128 MiB beside the budget), so the common path of small requests costs nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What each connection may hold of input, and of output, without reserving it.
pub const FREE_BYTES_PER_CONNECTION: usize = 64 * 1024;

/// The shared budget. Cheap to share: one atomic counter.
#[derive(Debug)]
pub struct ClientMemory {
    limit: usize,
    used: AtomicUsize,
}

/// A reservation could not grow: the budget is spent by other connections (or this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client buffers would exceed max_client_memory ({limit} bytes; {used} in use)")]
pub struct OverBudget {
    pub limit: usize,
    pub used: usize,
}

impl ClientMemory {
    pub fn new(limit: usize) -> Arc<ClientMemory> {
        Arc::new(ClientMemory { limit, used: AtomicUsize::new(0) })
    }

    /// Bytes reserved right now by every connection.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn grow(&self, bytes: usize) -> Result<(), OverBudget> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| OverBudget { limit: self.limit, used })
    }

    fn shrink(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one buffer holds of the budget.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<ClientMemory>,
    held: usize,
}

impl Reservation {
    pub fn new(memory: &Arc<ClientMemory>) -> Reservation {
        Reservation { memory: Arc::clone(memory), held: 0 }
    }

    /// Makes the reservation cover a buffer of `bytes` (the free allowance is subtracted here).
    /// Shrinking always succeeds; growing fails, holding what it held, when the budget lacks it.
    pub fn cover(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let wanted = bytes.saturating_sub(FREE_BYTES_PER_CONNECTION);
        if wanted > self.held {
            self.memory.grow(wanted - self.held)?;
        } else if wanted < self.held {
            self.memory.shrink(self.held - wanted);
        }
        self.held = wanted;
        Ok(())
    }

    /// Bytes this reservation holds of the budget.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.memory.shrink(self.held);
        }
    }
}

/// Bounds a reply while it is built, so that a command gathering many values (`MGET`) stops as
/// soon as its reply would be too large instead of building it first. The connection checks
/// every finished reply the same way; this is for replies that could be large before they are
/// finished.
#[derive(Debug)]
pub struct ReplyBudget {
    limit: usize,
    bytes: usize,
    reservation: Reservation,
}

impl ReplyBudget {
    /// A budget for one reply of at most `limit` bytes (`client_output_buffer_limit`).
    pub fn new(memory: &Arc<ClientMemory>, limit: usize) -> ReplyBudget {
        ReplyBudget { limit, bytes: 0, reservation: Reservation::new(memory) }
    }

    /// Adds `bytes` to the reply; `Err` is the error reply to send instead of it.
    pub fn charge(&mut self, bytes: usize) -> Result<(), crate::resp::Frame> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limit {
            return Err(reply_too_large(None, self.limit));
        }
        self.reservation.cover(self.bytes).map_err(|over| out_of_memory(&over))
    }
}

/// What bounds the replies commands build: each to `max_bytes` (`client_output_buffer_limit`),
/// all of them within `memory`. Handed to the key space's commands (`keyspace::Context`).
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimit<'a> {
    pub memory: &'a Arc<ClientMemory>,
    pub max_bytes: usize,
}

impl ReplyLimit<'_> {
    /// A budget for one reply.
    pub fn budget(&self) -> ReplyBudget {
        ReplyBudget::new(self.memory, self.max_bytes)
    }
}

/// The refusal of a reply of `size` bytes (`None`: more than the limit, not counted further).
pub fn reply_too_large(size: Option<usize>, limit: usize) -> crate::resp::Frame {
    let size = size.map_or_else(|| format!("more than {limit}"), |size| size.to_string());
    crate::resp::Frame::error(format!(
        "ERR reply of {size} bytes exceeds client_output_buffer_limit ({limit} bytes); ask for fewer or smaller values"
    ))
}

/// The refusal of a reply the shared budget cannot hold.
pub fn out_of_memory(over: &OverBudget) -> crate::resp::Frame {
    crate::resp::Frame::error(format!(
        "OOM the data port's client buffers are full (max_client_memory {} bytes, {} in use); retry later",
        over.limit, over.used
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_limit_and_give_back_on_drop() {
        let memory = ClientMemory::new(1000);
        let mut first = Reservation::new(&memory);
        let mut second = Reservation::new(&memory);
        first.cover(FREE_BYTES_PER_CONNECTION + 600).unwrap();
        assert_eq!(memory.used(), 600);
        assert_eq!(second.cover(FREE_BYTES_PER_CONNECTION + 500), Err(OverBudget { limit: 1000, used: 600 }));
        assert_eq!(second.held(), 0);
        second.cover(FREE_BYTES_PER_CONNECTION + 400).unwrap();
        first.cover(10).unwrap();
        assert_eq!(memory.used(), 400);
        drop(second);
        assert_eq!(memory.used(), 0);
        first.cover(FREE_BYTES_PER_CONNECTION).unwrap();
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_reply_budget_stops_at_its_limit_or_at_the_shared_one() {
        let memory = ClientMemory::new(1 << 20);
        let mut budget = ReplyBudget::new(&memory, 4 << 20);
        budget.charge(512 << 10).unwrap();
        assert_eq!(memory.used(), (512 << 10) - FREE_BYTES_PER_CONNECTION);
        let refused = budget.charge(1 << 20).unwrap_err();
        assert!(matches!(&refused, crate::resp::Frame::Error(text) if text.starts_with("OOM ")), "{refused:?}");
        let mut small = ReplyBudget::new(&memory, 1000);
        let refused = small.charge(1001).unwrap_err();
        assert!(
            matches!(&refused, crate::resp::Frame::Error(text) if text.contains("client_output_buffer_limit (1000 bytes)")),
            "{refused:?}"
        );
        drop((budget, small));
        assert_eq!(memory.used(), 0);
    }
}
