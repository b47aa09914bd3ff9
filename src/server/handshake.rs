//! The control port's TLS handshakes: slots that strangers cannot fill.
//!
//! ## Job
//! Until its handshake is done, a control-port connection is a stranger: anyone who can reach
//! the port can open one and stall it (send half a ClientHello, then nothing). If stalled
//! handshakes could hold every slot, the backup could not reconnect and every `durable` write
//! would fail, and no admin could run `hotpair status`. So handshakes get slots of their own,
//! apart from established sessions (the peer's replication session and admin sessions are
//! never counted here once their handshake is done), and a full table makes room instead of
//! refusing the newcomer:
//!
//! - a source (an address; an IPv6 /64) may hold at most [`MAX_HANDSHAKES_PER_SOURCE`]
//!   handshakes; its next one evicts its own oldest;
//! - all sources together hold at most [`MAX_HANDSHAKES`]; the next one evicts the oldest
//!   handshake of the source holding the most;
//! - a handshake still waiting for its ClientHello is evicted before one past it (a real client
//!   sends its ClientHello at once; only a staller sits before it), and among those of a kind
//!   the oldest goes first;
//! - a new connection first waits up to [`HELLO_GRACE`] for its ClientHello *on probation*
//!   ([`HandshakeSlots::probation`], [`MAX_ON_PROBATION`] places), outside the slots: a real
//!   client comes out of it past its ClientHello and takes a slot as negotiating, which no
//!   staller can take from it; a staller comes out without one and takes a slot as awaiting,
//!   pushing out the oldest staller of its source. (Deciding at accept time would not do: in a
//!   flood a client is often accepted before its ClientHello has arrived, and stallers
//!   reconnecting as fast as they are pushed out turn the slots over in about a millisecond.)
//!   Only a flood of more than [`MAX_ON_PROBATION`] / [`HELLO_GRACE`] (10,000) new connections a
//!   second fills probation; newcomers then go to the slots directly, as awaiting;
//! - every handshake has [`HANDSHAKE_TIMEOUT`] to finish in any case.
//!
//! So stalled connections cost an attacker a connection each and last only until the next
//! arrivals push them out, while a legitimate client is never pushed out by them once past its
//! ClientHello.
//!
//! ## Invariants
//! - At most [`MAX_HANDSHAKES`] handshakes are pending, and at most
//!   [`MAX_HANDSHAKES_PER_SOURCE`] per source, after every [`HandshakeSlots::admit`].
//! - A slot is freed when its [`Slot`] is dropped, whatever ended it.
//! - The table is logic: [`HandshakeSlots::admit`] decides and signals evictions; the connection
//!   task that holds the slot does the closing.
//!
//! ## Caveats
//! An attacker opening more than 10,000 connections a second fills probation, and then a client
//! whose ClientHello is slower than the attacker's next [`MAX_HANDSHAKES_PER_SOURCE`]
//! connections from its own address can be pushed out (the backup retries with backoff; an
//! admin command fails and can be run again). Full ClientHellos that then stall are treated
//! like a client negotiating: they cost the attacker more (a real ClientHello each), are bounded
//! by the same limits and timeout, but are not told apart from an admin's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::throttle::source_key;

/// Most handshakes pending on a control port.
pub const MAX_HANDSHAKES: usize = 256;
/// Most handshakes pending from one source.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 32;
/// How long a handshake may take from the TCP accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection may wait for its ClientHello on probation, before it takes a slot.
pub const HELLO_GRACE: Duration = Duration::from_millis(50);
/// Connections on probation at once; a newcomer finding it full goes straight to a slot.
pub const MAX_ON_PROBATION: usize = 512;

/// How far a handshake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// No whole ClientHello yet.
    AwaitingHello,
    /// The ClientHello arrived; keys and certificates are being exchanged.
    Negotiating,
}

#[derive(Debug)]
struct Pending {
    source: IpAddr,
    stage: Stage,
    /// Dropping it tells the handshake task to give up.
    evict: Option<oneshot::Sender<()>>,
}

/// Pending handshakes by admission order (ids grow).
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

impl Table {
    fn count_from(&self, source: IpAddr) -> usize {
        self.pending.values().filter(|p| p.source == source).count()
    }

    /// The handshake to evict among those `from` matches: not past its ClientHello first, then
    /// the oldest.
    fn victim(&self, from: impl Fn(&Pending) -> bool) -> Option<u64> {
        self.pending.iter().filter(|(_, p)| from(p)).min_by_key(|(id, p)| (p.stage, **id)).map(|(id, _)| *id)
    }

    /// Which handshake must go to admit one more from `source`, if any.
    fn make_room_for(&self, source: IpAddr) -> Option<u64> {
        if self.count_from(source) >= MAX_HANDSHAKES_PER_SOURCE {
            return self.victim(|p| p.source == source);
        }
        if self.pending.len() >= MAX_HANDSHAKES {
            let mut counts = std::collections::HashMap::new();
            for p in self.pending.values() {
                *counts.entry(p.source).or_insert(0usize) += 1;
            }
            // The source holding the most; ties go to the one whose oldest handshake is oldest.
            let busiest = counts.into_iter().max_by_key(|&(_, count)| count).map(|(s, _)| s)?;
            return self.victim(|p| p.source == busiest);
        }
        None
    }
}

/// The handshake slots of one control port.
#[derive(Debug)]
pub struct HandshakeSlots {
    table: Mutex<Table>,
    probation: Arc<tokio::sync::Semaphore>,
}

impl Default for HandshakeSlots {
    fn default() -> Self {
        HandshakeSlots { table: Mutex::default(), probation: Arc::new(tokio::sync::Semaphore::new(MAX_ON_PROBATION)) }
    }
}

/// One admitted handshake. Drop it when the handshake ends, however it ends.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<HandshakeSlots>,
    id: u64,
}

/// What [`HandshakeSlots::admit`] gives.
#[derive(Debug)]
pub struct Admission {
    pub slot: Slot,
    /// Completes (with an error) when the handshake is evicted to make room: give up then.
    pub evicted: oneshot::Receiver<()>,
    /// The source of the handshake evicted to admit this one, if one was.
    pub made_room_from: Option<IpAddr>,
}

impl HandshakeSlots {
    pub fn new() -> Arc<HandshakeSlots> {
        Arc::new(HandshakeSlots::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A table of ids: a panicked holder leaves nothing half-done that matters.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a handshake from `source`, evicting one if the table is full (module docs).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Admission {
        self.admit_at(source, Stage::AwaitingHello)
    }

    /// [`HandshakeSlots::admit`] for a handshake already at `stage` (past its ClientHello when it
    /// came out of probation with it).
    pub fn admit_at(self: &Arc<Self>, source: IpAddr, stage: Stage) -> Admission {
        let source = source_key(source);
        let mut table = self.lock();
        let made_room_from = table.make_room_for(source).and_then(|victim| table.pending.remove(&victim)).map(|p| {
            tracing::debug!(source = %p.source, stage = ?p.stage, "handshake evicted");
            p.source
        });
        let id = table.next_id;
        table.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        table.pending.insert(id, Pending { source, stage, evict: Some(evict) });
        Admission { slot: Slot { slots: Arc::clone(self), id }, evicted, made_room_from }
    }

    /// A place on probation, if one is free: hold it while waiting (at most [`HELLO_GRACE`]) for
    /// the ClientHello, then [`HandshakeSlots::admit_at`] the handshake at the stage it reached.
    pub fn probation(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.probation).try_acquire_owned().ok()
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Slot {
    /// Notes that the ClientHello arrived: this handshake is now evicted only after every one
    /// still waiting for its ClientHello.
    pub fn hello_received(&self) {
        if let Some(pending) = self.slots.lock().pending.get_mut(&self.id) {
            pending.stage = Stage::Negotiating;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut pending) = self.slots.lock().pending.remove(&self.id) {
            pending.evict.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_limit_evicts_its_own_oldest_staller() {
        let slots = HandshakeSlots::new();
        let mut stalled: Vec<Admission> = (0..MAX_HANDSHAKES_PER_SOURCE).map(|_| slots.admit(ip(1))).collect();
        let Admission { slot: admin, made_room_from, .. } = slots.admit(ip(1));
        assert_eq!(made_room_from, Some(ip(1)));
        assert_eq!(slots.pending(), MAX_HANDSHAKES_PER_SOURCE);
        assert_eq!(
            stalled[0].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the oldest was told to go"
        );
        assert_eq!(stalled[1].evicted.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        // The newcomer sent its ClientHello: more stallers push out stallers, not it.
        admin.hello_received();
        for _ in 0..3 * MAX_HANDSHAKES_PER_SOURCE {
            stalled.push(slots.admit(ip(1)));
        }
        assert!(slots.lock().pending.contains_key(&admin.id), "the negotiating handshake was evicted");
        assert_eq!(slots.pending(), MAX_HANDSHAKES_PER_SOURCE);
        drop(admin);
        assert_eq!(slots.pending(), MAX_HANDSHAKES_PER_SOURCE - 1);
    }

    #[test]
    fn a_full_table_evicts_from_the_busiest_source() {
        let slots = HandshakeSlots::new();
        let mut held = Vec::new();
        let sources = MAX_HANDSHAKES / MAX_HANDSHAKES_PER_SOURCE;
        for source in 0..sources {
            for _ in 0..MAX_HANDSHAKES_PER_SOURCE - usize::from(source == 0) {
                held.push(slots.admit(ip(source as u8)));
            }
        }
        assert_eq!(slots.pending(), MAX_HANDSHAKES - 1);
        held.push(slots.admit(ip(200)));
        let newest = slots.admit(ip(201));
        let evicted = newest.made_room_from;
        assert!(evicted.is_some_and(|source| source != ip(0)), "evicted from {evicted:?}");
        assert_eq!(slots.pending(), MAX_HANDSHAKES);
        drop(newest);
    }
}
