//! The primary's record of the heartbeats it sent in one session, to date the backup's echoes
//! by the monotonic clock (witness failsafe, docs/witness.md, "Timing").
//!
//! ## Job
//! A heartbeat carries the primary's wall clock (`time_ms`); the backup echoes the `time_ms`
//! of the last one it received. The wall clock may step (NTP), so an echo's value says nothing
//! about *when* by the monotonic clock that heartbeat left. The shipper therefore notes each
//! heartbeat as (`time_ms` put on the wire, the [`Instant`] just before it was written), and an
//! echo is turned back into that `Instant` by looking its value up here.
//!
//! ## Invariants
//! - The `Instant` given for an echo is never later than the send of the heartbeat the backup
//!   actually echoed: among equal values (a wall step back can repeat one) the earliest is
//!   taken, and a value that may belong to a heartbeat no longer kept (dropped by the cap)
//!   gives nothing.
//! - An echo of a heartbeat this session did not send (an older session's, or one dropped)
//!   gives nothing: it extends no failsafe.
//! - Bounded: entries sent before the one an echo matched are dropped (the backup echoes in
//!   the order it receives, so it cannot echo them again), and at most [`KEPT`] are kept.

use std::collections::VecDeque;

use tokio::time::Instant;

/// Heartbeats kept at most. The backup echoes within a heartbeat interval or two; a backup
/// that has not echoed any of the last `KEPT` heartbeats (minutes of them) gets no failsafe.
pub const KEPT: usize = 256;

/// Heartbeats sent in one session, oldest first, and what the cap dropped.
#[derive(Debug, Default)]
pub struct SentHeartbeats {
    sent: VecDeque<(u64, Instant)>,
    /// The largest `time_ms` dropped by the cap since an echo last matched past all of them:
    /// an echo at or below it may be of a dropped heartbeat, whose send was earlier than any
    /// kept one with the same value.
    dropped_up_to: Option<u64>,
}

impl SentHeartbeats {
    /// A heartbeat with `time_ms` on the wire is about to be written; `at` is read before the
    /// write, so the backup received it after `at`.
    pub fn sent(&mut self, time_ms: u64, at: Instant) {
        if self.sent.len() >= KEPT {
            if let Some((dropped, _)) = self.sent.pop_front() {
                self.dropped_up_to = Some(self.dropped_up_to.map_or(dropped, |d| d.max(dropped)));
            }
        }
        self.sent.push_back((time_ms, at));
    }

    /// The backup echoed `echo_ms`: when (monotonic) we sent that heartbeat — the earliest send
    /// with that value — or `None` if it is not one of ours or may be one we no longer keep.
    pub fn echoed(&mut self, echo_ms: u64) -> Option<Instant> {
        if self.dropped_up_to.is_some_and(|dropped| echo_ms <= dropped) {
            return None;
        }
        let index = self.sent.iter().position(|(time_ms, _)| *time_ms == echo_ms)?;
        let at = self.sent[index].1;
        // The backup echoes heartbeats in the order they reach it: what went before the one it
        // just echoed (at or after `index`) will not be echoed again.
        self.sent.drain(..index);
        // The echoed heartbeat is kept, so is everything after it: the dropped ones are behind.
        self.dropped_up_to = None;
        Some(at)
    }

    /// Heartbeats kept (for tests and logs).
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn an_echo_gives_the_send_instant_of_its_heartbeat() {
        let base = Instant::now();
        let mut sent = SentHeartbeats::default();
        for i in 0..5 {
            sent.sent(1_000_000 + i * 100, ms(base, i * 100));
        }
        assert_eq!(sent.echoed(1_000_200), Some(ms(base, 200)));
        // The same echo again (no newer heartbeat reached the backup): the same instant.
        assert_eq!(sent.echoed(1_000_200), Some(ms(base, 200)));
        assert_eq!(sent.echoed(1_000_400), Some(ms(base, 400)));
    }

    #[test]
    fn an_unknown_echo_extends_nothing() {
        let base = Instant::now();
        let mut sent = SentHeartbeats::default();
        // An echo before this session sent anything (the backup's value from the last session).
        assert_eq!(sent.echoed(999), None);
        sent.sent(1_000, base);
        sent.sent(1_100, ms(base, 100));
        assert_eq!(sent.echoed(1_050), None);
        assert_eq!(sent.echoed(0), None);
        assert_eq!(sent.len(), 2, "an unknown echo prunes nothing");
    }

    #[test]
    fn entries_older_than_the_echoed_one_are_pruned() {
        let base = Instant::now();
        let mut sent = SentHeartbeats::default();
        for i in 0..10 {
            sent.sent(5_000 + i, ms(base, i));
        }
        assert_eq!(sent.echoed(5_006), Some(ms(base, 6)));
        assert_eq!(sent.len(), 4, "5006..=5009 are kept");
        assert_eq!(sent.echoed(5_003), None, "pruned: an echo cannot go back");
    }

    #[test]
    fn equal_values_after_a_wall_step_back_give_the_earliest_send() {
        let base = Instant::now();
        let mut sent = SentHeartbeats::default();
        sent.sent(10_000, ms(base, 0));
        sent.sent(10_100, ms(base, 100));
        sent.sent(10_200, ms(base, 200));
        // The wall clock steps back 150 ms: the next heartbeats repeat values already sent.
        sent.sent(10_100, ms(base, 300));
        sent.sent(10_200, ms(base, 400));
        assert_eq!(sent.echoed(10_200), Some(ms(base, 200)), "ambiguous: the earlier send");
        assert_eq!(sent.echoed(10_100), Some(ms(base, 300)), "only the later 10100 is left");
        sent.sent(10_300, ms(base, 500));
        assert_eq!(sent.echoed(10_300), Some(ms(base, 500)));
    }

    #[test]
    fn a_wall_step_back_of_an_hour_changes_no_instant() {
        let base = Instant::now();
        let hour = 3_600_000;
        let mut sent = SentHeartbeats::default();
        sent.sent(50 * hour, ms(base, 0));
        sent.sent(50 * hour + 100, ms(base, 100));
        // Stepped back an hour: what matters is when each heartbeat left, not its wall value.
        sent.sent(49 * hour + 200, ms(base, 200));
        assert_eq!(sent.echoed(50 * hour + 100), Some(ms(base, 100)));
        assert_eq!(sent.echoed(49 * hour + 200), Some(ms(base, 200)));
        // A step forward likewise.
        sent.sent(60 * hour, ms(base, 300));
        assert_eq!(sent.echoed(60 * hour), Some(ms(base, 300)));
    }

    #[test]
    fn the_cap_bounds_the_list_and_a_dropped_value_is_never_matched_late() {
        let base = Instant::now();
        let mut sent = SentHeartbeats::default();
        for i in 0..KEPT as u64 + 10 {
            sent.sent(1_000 + i, ms(base, i));
        }
        assert_eq!(sent.len(), KEPT);
        // 1000..1010 were dropped: unknown now.
        assert_eq!(sent.echoed(1_005), None);
        // A step back repeats a dropped value: the kept copy was sent later than the dropped
        // one the backup may be echoing, so it is not taken.
        sent.sent(1_005, ms(base, 10_000));
        assert_eq!(sent.echoed(1_005), None);
        // An echo past everything dropped matches, and then the dropped ones are behind us.
        assert_eq!(sent.echoed(1_100), Some(ms(base, 100)));
        assert_eq!(sent.echoed(1_005), Some(ms(base, 10_000)));
    }
}
