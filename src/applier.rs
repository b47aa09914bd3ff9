//! The applier: a thread that applies records to the store, in LSN order, once the journal
//! they came from says they are durable. Used by the primary's pipeline (local journal) and by
//! the backup (remote journal).
//!
//! ## Invariants
//! - A record is applied only after `journal.sync_to(record.lsn)` returned: the store never holds
//!   a record its journal could lose in a crash.
//! - After each record the store's digest is compared with the record's; on a mismatch, or any
//!   error, the applier stops for good and says why in [`Applier::failure`] — applying more on
//!   top of a diverged store would only spread the damage.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::journal::{Journal, Lsn, Record};
use crate::store::{Applied, Store};

pub struct Applier {
    tx: Mutex<Option<Sender<Record>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    applied_rx: watch::Receiver<Lsn>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Applier {
    /// Starts the thread. `after_apply` runs after each record is in the store.
    pub fn start(journal: Journal, store: Arc<Store>, after_apply: impl Fn(&Record) + Send + 'static) -> Applier {
        let (tx, rx) = channel::<Record>();
        let (applied_tx, applied_rx) = watch::channel(store.position().applied_lsn);
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = failure.clone();
        let thread = std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || {
                for record in rx {
                    if let Err(reason) = apply_one(&journal, &store, &record) {
                        tracing::error!(%reason, "the applier stops");
                        *lock(&thread_failure) = Some(reason);
                        return;
                    }
                    after_apply(&record);
                    applied_tx.send_replace(record.lsn);
                }
            })
            .ok();
        if thread.is_none() {
            *lock(&failure) = Some("could not start the applier thread".into());
        }
        Applier { tx: Mutex::new(Some(tx)), thread: Mutex::new(thread), applied_rx, failure }
    }

    /// Queues a record (records must be queued in LSN order).
    pub fn submit(&self, record: Record) -> Result<(), String> {
        if let Some(reason) = self.failure() {
            return Err(reason);
        }
        match lock(&self.tx).as_ref().map(|tx| tx.send(record)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failure().unwrap_or_else(|| "the applier has stopped".into())),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.applied_rx.clone()
    }

    pub fn applied_lsn(&self) -> Lsn {
        *self.applied_rx.borrow()
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Applies what was queued and becomes durable, then stops the thread.
    pub fn shutdown(&self) {
        lock(&self.tx).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn apply_one(journal: &Journal, store: &Store, record: &Record) -> Result<(), String> {
    journal.sync_to(record.lsn).map_err(|e| format!("cannot apply LSN {}: {e}", record.lsn))?;
    match store.apply(record).map_err(|e| format!("cannot apply LSN {}: {e}", record.lsn))? {
        Applied::Done { digest_matches: false, digest } => Err(format!(
            "digest mismatch at LSN {}: store has {digest}, record says {}",
            record.lsn, record.digest_after
        )),
        _ => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind the lock; a panicked holder leaves nothing half-done that matters more.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
