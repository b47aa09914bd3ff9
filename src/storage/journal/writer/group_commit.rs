//! The journal's group commit: the flusher thread that writes what was appended, fsyncs once
//! for every committer waiting, and publishes the durable LSN.
//!
//! ## Group commit
//! Appends only encode into an in-memory buffer under a short lock. One flusher thread per
//! journal writes the buffer to the active segment and calls `fdatasync`; one fsync therefore
//! covers every record appended before it started, however many committers are waiting. Waiters
//! learn durability from `sync_to` (blocking) or from the `watch` channel (async).
//!
//! Blocking waiters register in a list with the LSN they wait for and park. After an fsync the
//! flusher takes out exactly the waiters the new durable LSN covers and unparks them, after
//! dropping the lock; waiters it does not cover stay asleep (no `notify_all` storm). Then, if the
//! fsync carried more than one record, the flusher *gathers*: it waits, without the lock, until
//! as many new records have been appended as that fsync released (the released committers coming
//! back), or a bound passes. The appender that completes the group wakes it, so the next fsync
//! carries nearly every active committer instead of half of them.
//!
//! ## Paced fsyncs
//! With [`JournalOptions::sync_pace`] set, the flusher starts an fsync at most that often: one
//! fsync then covers everything that arrived meanwhile. A waiter waits up to one pace longer. A
//! shutdown is not paced.
//!
//! ## Syncing on the caller's thread
//! With [`JournalOptions::caller_syncs`] set, appends do not wake the flusher: the appender calls
//! [`Journal::sync_now`], which writes the buffer and fsyncs on its own thread. The backup's
//! remote journal at `durable` works this way: the follower receives a batch, appends it, fsyncs
//! and acks in one go, instead of waking the flusher thread and being woken back by it (two
//! cross-thread wake-ups per batch, on the path every commit waits for). The flusher then only
//! serves `sync_to` waiters, when no `sync_now` is in flight (one that is wakes it as it ends if
//! it left waiters uncovered), and shutdown. `sync_now` waits for an fsync already in flight
//! rather than start a second one beside it.

use super::*;

impl Inner {
    /// Fsyncs `file` without the lock, every record up to `target` having been written to it
    /// before, then publishes `target` as durable (taking the waiters it covers into `covered`)
    /// or fails the journal. Shared by the flusher and `sync_now`. A journal failed meanwhile (a
    /// roll's fsync, say) stays failed: nothing more is called durable. Returns the lock again,
    /// the outcome and how long the fsync took.
    pub(super) fn fsync_written<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        file: &File,
        target: Lsn,
        covered: &mut Vec<Arc<Waiter>>,
    ) -> (MutexGuard<'a, State>, Result<(), JournalError>, Duration) {
        state.syncing += 1;
        drop(state);
        let started = Instant::now();
        let result = self.sync_data(file);
        let delay = self.simulated_fsync_delay_ns.load(Ordering::Relaxed);
        if delay > 0 && result.is_ok() {
            std::thread::sleep(Duration::from_nanos(delay));
        }
        let took = started.elapsed();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.syncing -= 1;
        let outcome = match (result, state.failed.clone()) {
            (Ok(()), None) => {
                self.publish_durable(&mut state, target, covered);
                Ok(())
            }
            (Ok(()), Some(reason)) => Err(self.failed_error(&reason)),
            (Err(err), _) => {
                Err(self.fail(&mut state, format!("fsync of journal {} failed: {err}", self.dir.display())))
            }
        };
        self.durable.notify_all();
        (state, outcome, took)
    }

    /// Moves the durable LSN up to `lsn` (never down) and takes the waiters it now covers out
    /// of the list, into `covered`, for the caller to wake with [`wake_durable`].
    pub(super) fn publish_durable(&self, state: &mut State, lsn: Lsn, covered: &mut Vec<Arc<Waiter>>) {
        if lsn <= state.durable_lsn {
            return;
        }
        state.durable_lsn = lsn;
        self.durable_tx.send_replace(lsn);
        let mut i = 0;
        while i < state.waiters.len() {
            if state.waiters[i].0 <= lsn {
                covered.push(state.waiters.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
    }

    /// The flusher thread: write what was appended, fsync once, publish the durable LSN, wake
    /// exactly the waiters it covers, then gather the next group.
    ///
    /// After an fsync that covered more than one record (so several committers are active) the
    /// flusher waits, *without the lock*, until as many records have been appended since as that
    /// fsync covered — the committers it just released, coming back — or until the bound of
    /// [`JournalOptions::gather`] has passed. The append that completes the group wakes it at
    /// once. Without the pause the released committers miss the next fsync and the committers
    /// split into two alternating halves, each fsync carrying only half of them (measured: N/2
    /// records per fsync at N committers). [`Gather::Long`] is the default because half an fsync
    /// (once the only bound) is too short once the CPU is busy: a released committer's round trip
    /// through its client then takes longer, and a primary at 50 clients fsynced every 12–14
    /// records instead of every 28–32 (docs/benchmarks.md, "Gathering longer"). A lone committer
    /// never pauses, so its latency stays one fsync.
    pub(super) fn flush_loop(&self) {
        let mut covered_waiters: Vec<Arc<Waiter>> = Vec::new();
        let (pace, gather_bound) = (self.options.sync_pace, self.options.gather);
        let mut last_sync = Instant::now();
        let mut state = self.lock();
        loop {
            // A caller-synced journal is the flusher's business only when someone waits in
            // `sync_to`, or at shutdown.
            let asked =
                !self.options.caller_syncs || (!state.waiters.is_empty() && state.syncing == 0) || state.shutdown;
            let pending = asked && state.last_lsn.unwrap_or(0) > state.durable_lsn;
            if !pending || state.failed.is_some() {
                if state.shutdown {
                    if state.failed.is_none() {
                        self.cut_preallocation(&mut state);
                    }
                    recheck_all(&mut state);
                    return;
                }
                state.flusher_wants = Some(0);
                state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.flusher_wants = None;
            if let Some(left) = (last_sync + pace).checked_duration_since(Instant::now()) {
                if !left.is_zero() && !state.shutdown {
                    // Pacing, not synchronisation: appends do not wake it; a shutdown does.
                    state = self.work.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
            }
            last_sync = Instant::now();
            let write_delay = self.simulated_write_delay_ns.load(Ordering::Relaxed);
            if write_delay > 0 && !state.shutdown {
                drop(state);
                std::thread::sleep(Duration::from_nanos(write_delay));
                state = self.lock();
            }
            if self.write_buffer(&mut state).is_err() {
                continue;
            }
            let target = state.written_lsn;
            let covered = target.saturating_sub(state.durable_lsn);
            let Some(file) = state.active.clone() else {
                continue;
            };
            let (relocked, _, took) = self.fsync_written(state, &file, target, &mut covered_waiters);
            state = relocked;
            // A paced journal gathers by its pace; a caller-synced one has its callers.
            let gather = covered > 1
                && pace.is_zero()
                && !self.options.caller_syncs
                && state.failed.is_none()
                && !state.shutdown;
            // The released committers' next records, on top of what was appended meanwhile.
            let wants = state.last_lsn.unwrap_or(0) + covered;
            drop(state);
            wake_durable(&mut covered_waiters);
            state = self.lock();
            if gather {
                let deadline = Instant::now() + gather_bound.bound(took);
                while state.last_lsn.unwrap_or(0) < wants && state.failed.is_none() && !state.shutdown {
                    let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                        break;
                    };
                    state.flusher_wants = Some(wants);
                    state = self.work.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
                }
                state.flusher_wants = None;
            }
        }
    }
}

/// Wakes waiters whose LSN is durable (taken out of the list by `publish_durable`).
pub(super) fn wake_durable(covered: &mut Vec<Arc<Waiter>>) {
    for waiter in covered.drain(..) {
        waiter.wake(WOKEN_DURABLE);
    }
}

/// Wakes every waiter to look at the state again (failure, truncation, shutdown).
pub(super) fn recheck_all(state: &mut State) {
    for (_, waiter) in state.waiters.drain(..) {
        waiter.wake(WOKEN_RECHECK);
    }
}
