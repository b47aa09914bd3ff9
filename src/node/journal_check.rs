//! The check of closed journal segments that an open no longer makes.
//!
//! ## Job
//! Opening a journal reads only its last segment whole; closed segments are taken from their
//! seals (`journal::seal`), so a restart does not grow with the journal. This thread makes up
//! for it once per start: it reads every sealed segment of both journals
//! ([`crate::storage::journal::Journal::check_sealed`]) and compares it with the CRC32C recorded when the
//! segment was closed. Damage raises a `journal-damaged` incident naming the file (the records
//! themselves are still CRC-checked whenever anything reads them, and fail there too).
//!
//! ## Invariants
//! - It starts after the node serves, and reads beside it: it never delays the node's start.
//! - It reads at the disk's pace on its own thread, a megabyte at a time, dropping the pages
//!   behind it; a node stopped meanwhile leaves the check unfinished (the next start redoes it).

use std::sync::Arc;

use super::Node;
use crate::node::incident::{Kind, Severity};

/// Starts the check on its own thread.
pub fn start(node: Arc<Node>) {
    let spawned = std::thread::Builder::new().name("journal-check".into()).spawn(move || run(&node));
    if let Err(err) = spawned {
        tracing::warn!(%err, "could not start the check of the closed journal segments");
    }
}

fn run(node: &Node) {
    for (name, journal) in [("local", &node.local), ("remote", &node.remote)] {
        if *node.shutdown.borrow() {
            return;
        }
        match journal.check_sealed() {
            Ok(checked) => tracing::info!(
                journal = name,
                segments = checked.segments,
                bytes = checked.bytes,
                "closed journal segments match their seals"
            ),
            Err(err) => {
                let message = format!("the {name} journal is damaged: {err}");
                tracing::error!(%message);
                node.incidents.raise(Kind::JournalDamaged, Severity::Critical, message);
            }
        }
    }
}
