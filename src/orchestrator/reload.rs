//! `hotpair reload`: both nodes re-read the pair file each was started with and take what may
//! change live (`crate::node::reload` says which keys those are), pair-wise.
//!
//! ## Invariants
//! - Both nodes are checked before either applies: a node that is unreachable, cannot read its
//!   file, or finds a key that needs a restart refuses, and then nothing changes (exit 1).
//! - Each apply names the digest its check read; a file edited in between is refused there.
//! - Applied on the first node and not the second is exit 3, naming the resume (`hotpair
//!   reload` again: an apply of an unchanged file is a no-op, so re-running is safe).
//! - Each apply tells the node the digest its peer runs once applied, so `config-drift`
//!   resolves as soon as the two files are the same (or stays, saying so, when they are not),
//!   and none is raised in passing between the two applies.

use serde_json::Value;

use super::{OrchestrationError, Run};
use crate::admin::protocol::{self, ReloadReply};
use crate::config::PairConfig;
use crate::replication::wire::AdminRequest;

const RESUME: &str = "hotpair reload";

pub async fn reload(pair: &PairConfig, json: bool) -> u8 {
    let run = Run::new("reload", pair, json);
    let result = reload_both(&run).await;
    run.finish(result)
}

async fn reload_both(run: &Run) -> Result<String, OrchestrationError> {
    // Invariant: a loaded pair file has exactly two nodes.
    let [first, second] = [0, 1].map(|i| run.pair.nodes[i].name.clone());
    let (a, b) = tokio::join!(ask(run, &first, false, None, None), ask(run, &second, false, None, None));
    let (checked_a, checked_b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(reason), _) | (_, Err(reason)) => {
            let reason = if reason.contains("nothing was changed") {
                reason
            } else {
                format!("{reason}; nothing was changed (reload needs both nodes up)")
            };
            return Err(OrchestrationError::Refused(reason));
        }
    };
    for checked in [&checked_a, &checked_b] {
        run.say(format!("  check {:<6} {}", checked.node, describe(checked)));
    }
    // Each node is told the digest its peer runs once applied, so neither raises a passing
    // config-drift between the two applies.
    let applied_a = ask(run, &first, true, Some(checked_a.digest.clone()), Some(checked_b.digest.clone()))
        .await
        .map_err(OrchestrationError::Refused)?;
    let applied_b = ask(run, &second, true, Some(checked_b.digest.clone()), Some(applied_a.digest.clone())).await;
    let applied_b = match applied_b {
        Ok(applied) => applied,
        Err(reason) => {
            // The second still runs its old file: the first must compare with that (an unchanged
            // file applies as a no-op, so this only corrects what it compares with).
            let still = Some(checked_b.previous_digest.clone());
            let _ = ask(run, &first, true, Some(applied_a.digest.clone()), still).await;
            return Err(OrchestrationError::PartWay {
                reason: format!("applied on {first} ({}) but not on {second}: {reason}", describe(&applied_a)),
                resume: RESUME.to_string(),
            });
        }
    };
    run.detail("nodes", [&applied_a, &applied_b]);
    let same = applied_a.digest == applied_b.digest;
    let digests = if same {
        format!("both run {}", short(&applied_a.digest))
    } else {
        format!(
            "the two pair files still differ ({first} runs {}, {second} runs {}): config-drift stays open until both hosts hold the same file",
            short(&applied_a.digest),
            short(&applied_b.digest)
        )
    };
    Ok(format!("{first}: {}; {second}: {}; {digests}", describe(&applied_a), describe(&applied_b)))
}

/// One node's check (`apply` false) or apply; `Err` is its refusal, naming the node.
async fn ask(
    run: &Run,
    node: &str,
    apply: bool,
    expect_digest: Option<String>,
    peer_digest: Option<String>,
) -> Result<ReloadReply, String> {
    let request = AdminRequest::Reload { apply, expect_digest, peer_digest };
    let answer: Value = run.send(node, request, crate::admin::client::ADMIN_TIMEOUT).await?;
    protocol::read("reload", answer)
}

fn describe(reply: &ReloadReply) -> String {
    if reply.changed.is_empty() {
        "nothing changed in its pair file".to_string()
    } else {
        format!("{} ({} → {})", reply.changed.join(", "), short(&reply.previous_digest), short(&reply.digest))
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
