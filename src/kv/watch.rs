//! `WATCH`: which connections watch which keys, and whether a watched key changed since.
//!
//! ## Job
//! A connection that says `WATCH k` registers a [`Watcher`] for `k` here. Every commit on the
//! primary touches the keys it writes ([`Registry::touch`], called by the pipeline while it
//! holds its writer lock, right after the record is appended); touching marks every watcher of
//! the key dirty, and a dirty watcher's `EXEC` answers null without running anything. Client
//! writes, active expiry's deletions and `FLUSHALL` all commit through the pipeline, so each of
//! them aborts the transactions that watch the keys it writes — as in Redis, a write of the
//! same value counts.
//!
//! ## Invariants
//! - `touch` and the `EXEC` check both run under the pipeline's writer lock, so a commit is
//!   either before the check (and seen) or after the whole `EXEC` (and irrelevant to it).
//! - A key that was live at `WATCH` and has expired by `EXEC` also aborts it (Redis 7), checked
//!   by the `EXEC` itself from the watcher's [`Watcher::keys`].
//! - A watcher is unregistered by `EXEC`, `DISCARD`, `UNWATCH` and when its connection ends
//!   (the data port's session drops it), so the registry holds only live connections' keys.
//!
//! ## Caveat
//! On a backup nothing commits, so only the expiry check can abort an `EXEC` there; records
//! the backup applies from its primary do not touch watchers (a backup's `EXEC` may only read).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The watched keys of one node.
#[derive(Default)]
pub struct Registry {
    keys: Mutex<HashMap<Vec<u8>, Vec<Arc<Watcher>>>>,
    /// Keys with at least one watcher: commits skip the lock when it is zero.
    watched: AtomicUsize,
}

/// One connection's watch: its keys and whether one of them changed.
#[derive(Default)]
pub struct Watcher {
    dirty: AtomicBool,
    /// Each watched key and whether it was live when watched.
    keys: Mutex<Vec<(Vec<u8>, bool)>>,
}

impl Watcher {
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// The watched keys, with whether each was live when watched.
    pub fn keys(&self) -> Vec<(Vec<u8>, bool)> {
        lock(&self.keys).clone()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.keys).is_empty()
    }
}

impl Registry {
    /// Registers `watcher` for `key` (which was `live` or not when watched).
    pub fn watch(&self, watcher: &Arc<Watcher>, key: Vec<u8>, live: bool) {
        let mut keys = lock(&self.keys);
        let watchers = keys.entry(key.clone()).or_default();
        if watchers.iter().any(|w| Arc::ptr_eq(w, watcher)) {
            return;
        }
        if watchers.is_empty() {
            self.watched.fetch_add(1, Ordering::AcqRel);
        }
        watchers.push(watcher.clone());
        lock(&watcher.keys).push((key, live));
    }

    /// Forgets all of `watcher`'s keys and its dirty mark (`EXEC`, `DISCARD`, `UNWATCH`).
    pub fn unwatch(&self, watcher: &Arc<Watcher>) {
        let mine = std::mem::take(&mut *lock(&watcher.keys));
        let mut keys = lock(&self.keys);
        for (key, _) in mine {
            if let Some(watchers) = keys.get_mut(&key) {
                watchers.retain(|w| !Arc::ptr_eq(w, watcher));
                if watchers.is_empty() {
                    keys.remove(&key);
                    self.watched.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        watcher.dirty.store(false, Ordering::Release);
    }

    /// Marks every watcher of `key` dirty.
    pub fn touch(&self, key: &[u8]) {
        if self.watched.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(watchers) = lock(&self.keys).get(key) {
            for watcher in watchers {
                watcher.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// Whether any key is watched at all (the commit path's fast check).
    pub fn is_watching(&self) -> bool {
        self.watched.load(Ordering::Acquire) > 0
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_dirties_only_the_watchers_of_that_key_until_they_unwatch() {
        let registry = Registry::default();
        let (a, b) = (Arc::new(Watcher::default()), Arc::new(Watcher::default()));
        registry.watch(&a, b"k".to_vec(), true);
        registry.watch(&b, b"j".to_vec(), false);
        registry.touch(b"k");
        assert!(a.is_dirty() && !b.is_dirty());
        registry.unwatch(&a);
        assert!(!a.is_dirty() && a.is_empty());
        registry.unwatch(&b);
        assert!(!registry.is_watching());
        registry.touch(b"j");
        assert!(!b.is_dirty(), "an unwatched key touches nobody");
    }
}
