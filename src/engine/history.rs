//! Comparing histories: where a node stands on another's history, what a primary tells a
//! would-be backup at its hello, and where a rejoining node diverged.
//!
//! ## Invariants
//! - Two nodes agree on an LSN when both histories put it in the same epoch (one writer per
//!   epoch makes the records equal); what a node does not hold is not agreed.
//! - A welcome never cuts a backup below what it confirmed, matched or acknowledged
//!   ([`welcome_plan`]): what it cuts was neither applied nor acknowledged.

use crate::storage::journal::{HistoryEntry, Lsn};

/// Where a node with history `theirs` and last LSN `their_last` stands against `ours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Everything they hold is on our history: continue from `next_lsn`.
    OnHistory { next_lsn: Lsn },
    /// They hold records after `at_lsn` that are not on our history (an orphaned tail).
    Diverged { at_lsn: Lsn },
}

/// Compares histories. Two nodes agree on an LSN when both histories put it in the same epoch
/// led by the same primary (one writer per epoch makes the records equal; two promotions that
/// both claimed one epoch are told apart by their primary). `our_last` bounds what we hold.
pub fn standing(ours: &[HistoryEntry], our_last: Lsn, theirs: &[HistoryEntry], their_last: Lsn) -> Standing {
    let epoch_at = |history: &[HistoryEntry], lsn: Lsn| {
        history.iter().rev().find(|h| h.first_lsn <= lsn).map(|h| (h.epoch, h.primary.clone()))
    };
    // The epoch functions are step functions: the first disagreement is at a boundary of either.
    let mut boundaries: Vec<Lsn> = ours.iter().chain(theirs).map(|h| h.first_lsn.max(1)).collect();
    boundaries.push(1);
    boundaries.sort_unstable();
    boundaries.dedup();
    let first_disagreement = boundaries
        .into_iter()
        .filter(|&lsn| lsn <= their_last)
        .find(|&lsn| epoch_at(ours, lsn) != epoch_at(theirs, lsn));
    // What we do not hold (past our last record) is not agreed either.
    let agreed = first_disagreement.map_or(their_last, |lsn| lsn - 1).min(our_last);
    if agreed == their_last {
        Standing::OnHistory { next_lsn: their_last + 1 }
    } else {
        Standing::Diverged { at_lsn: agreed }
    }
}

/// What a primary tells a would-be backup at its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Continue from `next_lsn`.
    From { next_lsn: Lsn },
    /// Drop everything past `lsn` first, then continue from `lsn + 1`.
    CutAfter { lsn: Lsn },
    /// Its history left ours after `at_lsn`: it must be rejoined.
    Diverged { at_lsn: Lsn },
}

/// What a would-be backup says of itself in its hello, held against our journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupTail {
    pub last_lsn: Lsn,
    /// How far a primary confirmed its records durable: it may have applied up to here.
    pub confirmed_lsn: Lsn,
    /// How many of its records past `confirmed_lsn`, from the first on, are ours (same CRC).
    pub matched: u64,
    /// Whether every record it holds past `confirmed_lsn` is ours.
    pub all_matched: bool,
    /// Whether its history is ours, entry for entry.
    pub same_history: bool,
}

/// Decides the welcome. Records are shipped before the primary's fsync, so a primary that
/// crashed may restart without records its backup holds, and may then write others at those
/// LSNs in the same epoch. What is the same on both sides is everything up to `agreed`: what
/// the backup had confirmed (a primary made it durable, the backup may have applied it), the
/// records past it that we hold too (same CRC, in order), and what it acknowledged to us
/// durably (`acknowledged`, capped at our own durable LSN). Past `agreed` the backup's records
/// were never applied, so dropping them costs nothing, and never acknowledged: an acknowledged
/// record was durable here, so we still hold it and it matched.
pub fn welcome_plan(standing: Standing, tail: BackupTail, acknowledged: Lsn) -> Plan {
    let agreed = tail.confirmed_lsn.saturating_add(tail.matched).max(acknowledged).min(tail.last_lsn);
    match standing {
        Standing::OnHistory { next_lsn } if tail.all_matched || tail.last_lsn <= agreed => Plan::From { next_lsn },
        Standing::OnHistory { .. } => Plan::CutAfter { lsn: agreed },
        // Our own epoch's tail, lost in a crash (or rewritten since): the backup holds more of it.
        Standing::Diverged { at_lsn } if tail.same_history && agreed <= at_lsn => Plan::CutAfter { lsn: agreed },
        Standing::Diverged { at_lsn } => Plan::Diverged { at_lsn },
    }
}

/// The primary as the orchestrator saw it when it asked a node to rejoin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryView {
    pub history: Vec<HistoryEntry>,
    pub epoch: crate::storage::journal::Epoch,
    pub last_lsn: Lsn,
    /// The lowest LSN its journals can still ship.
    pub first_available: Lsn,
}

/// The divergence LSN of a node with `history` and records up to `our_last` behind `primary`,
/// and the primary's last LSN as far as the node knows it.
///
/// `primary` was read before the node was asked. Records the node holds past
/// `primary.last_lsn` in the primary's own epoch came from that primary (one writer per epoch),
/// received in the meantime: they are on its history, not a divergence.
pub fn divergence_point(primary: &PrimaryView, history: &[HistoryEntry], our_last: Lsn) -> (Lsn, Lsn) {
    let in_primary_epoch =
        history.last().is_some_and(|h| h.epoch == primary.epoch) && history.last() == primary.history.last();
    let primary_last = if in_primary_epoch { primary.last_lsn.max(our_last) } else { primary.last_lsn };
    let divergence = match standing(&primary.history, primary_last, history, our_last) {
        Standing::OnHistory { next_lsn } => next_lsn - 1,
        Standing::Diverged { at_lsn } => at_lsn,
    };
    (divergence, primary_last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::journal::Epoch;

    fn h(entries: &[(Epoch, Lsn, &str)]) -> Vec<HistoryEntry> {
        entries.iter().map(|&(epoch, first_lsn, p)| HistoryEntry { epoch, first_lsn, primary: p.into() }).collect()
    }

    #[test]
    fn standing_follows_the_histories() {
        let one = h(&[(1, 1, "a")]);
        let two = h(&[(1, 1, "a"), (2, 101, "b")]);
        // A lagging backup in the same epoch continues.
        assert_eq!(standing(&one, 500, &one, 120), Standing::OnHistory { next_lsn: 121 });
        // The old primary wrote 101..120 in epoch 1 while b started epoch 2 at 101.
        assert_eq!(standing(&two, 300, &one, 120), Standing::Diverged { at_lsn: 100 });
        // The old primary had shipped everything: nothing to undo.
        assert_eq!(standing(&two, 300, &one, 100), Standing::OnHistory { next_lsn: 101 });
        // A backup that already followed into epoch 2.
        assert_eq!(standing(&two, 300, &two, 250), Standing::OnHistory { next_lsn: 251 });
        // They hold more of our own epoch than we do (we crashed before our fsync: see `welcome_plan`).
        assert_eq!(standing(&one, 90, &one, 100), Standing::Diverged { at_lsn: 90 });
        // An empty node is on every history.
        assert_eq!(standing(&two, 300, &one, 0), Standing::OnHistory { next_lsn: 1 });
        // Two promotions that both claimed epoch 2 do not agree past its start.
        let other_two = h(&[(1, 1, "a"), (2, 101, "a")]);
        assert_eq!(standing(&two, 300, &other_two, 150), Standing::Diverged { at_lsn: 100 });
    }

    #[test]
    fn a_backup_tail_the_primary_lost_or_rewrote_is_cut_where_both_agree() {
        let tail = |last_lsn, confirmed_lsn, matched, all_matched, same_history| BackupTail {
            last_lsn,
            confirmed_lsn,
            matched,
            all_matched,
            same_history,
        };
        let on = Standing::OnHistory { next_lsn: 101 };
        // A backup that holds only confirmed records continues.
        assert_eq!(welcome_plan(on, tail(100, 100, 0, true, true), 90), Plan::From { next_lsn: 101 });
        // Unconfirmed records that are all ours: continue.
        assert_eq!(welcome_plan(on, tail(100, 80, 20, true, true), 90), Plan::From { next_lsn: 101 });
        // We restarted without some and wrote others at their LSNs: cut after the last one of
        // ours (85), never below what it acknowledged to us (90).
        assert_eq!(welcome_plan(on, tail(100, 80, 5, false, true), 0), Plan::CutAfter { lsn: 85 });
        assert_eq!(welcome_plan(on, tail(100, 80, 5, false, true), 90), Plan::CutAfter { lsn: 90 });
        // We restarted holding less of our own epoch (97): its records up to 97 that we hold
        // stay (one of them may be an acknowledged commit), the rest goes.
        let behind = Standing::Diverged { at_lsn: 97 };
        assert_eq!(welcome_plan(behind, tail(100, 90, 7, false, true), 0), Plan::CutAfter { lsn: 97 });
        assert_eq!(welcome_plan(behind, tail(100, 95, 0, false, true), 0), Plan::CutAfter { lsn: 95 });
        // It applied past what we hold, or its history is another: a real divergence.
        assert_eq!(welcome_plan(behind, tail(100, 99, 0, false, true), 0), Plan::Diverged { at_lsn: 97 });
        assert_eq!(welcome_plan(behind, tail(100, 95, 0, false, false), 0), Plan::Diverged { at_lsn: 97 });
    }

    fn view(history: Vec<HistoryEntry>, epoch: Epoch, last_lsn: Lsn) -> PrimaryView {
        PrimaryView { history, epoch, last_lsn, first_available: 1 }
    }

    #[test]
    fn records_received_after_the_primary_was_looked_at_are_not_a_divergence() {
        // The orchestrator saw a at LSN 52; b, following a in its epoch, has since received up to 60.
        let one = h(&[(1, 1, "a")]);
        assert_eq!(divergence_point(&view(one.clone(), 1, 52), &one, 60), (60, 60));
        // Behind the view: nothing to undo either.
        assert_eq!(divergence_point(&view(one.clone(), 1, 52), &one, 40), (40, 52));
    }

    #[test]
    fn a_tail_written_in_an_older_epoch_is_still_a_divergence_whatever_the_view() {
        // a wrote 101..120 in epoch 1 while b began epoch 2 at 101: a's tail is orphaned, even
        // if the view of b is older than a's last record.
        let a_history = h(&[(1, 1, "a")]);
        let b_history = h(&[(1, 1, "a"), (2, 101, "b")]);
        assert_eq!(divergence_point(&view(b_history.clone(), 2, 110), &a_history, 120), (100, 110));
        // A node that followed b into epoch 2 is on b's history, past b's view too.
        assert_eq!(divergence_point(&view(b_history.clone(), 2, 110), &b_history, 130), (130, 130));
    }
}
