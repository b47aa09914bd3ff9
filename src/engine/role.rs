//! The role table: which role follows which on each kind of role change.
//!
//! ## Job
//! [`transition`] takes the current role and an [`Event`] and returns the next role, or refuses
//! with the reason. The engine (`super`) consults it for every role it gives a node; it is the
//! table alone, without the preconditions that need more than the role (epochs, LSNs, leases).
//!
//! ## The roles (as INTERFACE.md names them)
//! - `primary` — takes writes for its epoch.
//! - `draining` — a primary in a switchover: refuses new writes (`-TRYAGAIN`) while in-flight
//!   commits finish; returns to `primary` when its lease expires or the admin resumes it.
//! - `backup` — follows the primary and serves reads.
//! - `fenced` — heard of a higher epoch while primary or draining: takes no writes, follows
//!   nobody, until it is rejoined.
//! - `rejoining` — undoing its orphaned tail and catching up; becomes `backup` when done.
//!
//! ## Invariants
//! - Only `primary` takes writes ([`Role::takes_writes`]); only `backup` follows.
//! - Every event is idempotent where the orchestrator may repeat it after a crash (a second
//!   `Drain`, `Demote`, `Promote`, `Resume` in the role it leads to is accepted and changes nothing).
//! - Hearing a higher epoch never leaves a node able to write.

use crate::storage::meta::Role;

/// What can happen to a node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Switchover, phase drain: stop taking new writes for a lease.
    Drain,
    /// The drain lease ran out without the switchover completing.
    LeaseExpired,
    /// The admin (or a rolled-back switchover) resumes writes on a drained primary.
    Resume,
    /// Switchover, phase demote: the drained primary becomes the backup.
    Demote,
    /// Switchover or failover, phase promote: the backup becomes primary of a new epoch.
    Promote,
    /// A peer (or an admin) showed an epoch higher than ours.
    HigherEpochSeen,
    /// Rejoin begins: undo the orphaned tail and catch up.
    RejoinStarted,
    /// Rejoin caught up: follow the primary as its backup.
    RejoinFinished,
    /// A promotion failed after the store applied records its primary had not confirmed: the
    /// node can neither follow as before nor take writes.
    PromotionFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node that is {} cannot {event:?}: {reason}", from.name())]
pub struct IllegalTransition {
    pub from: Role,
    pub event: Event,
    pub reason: &'static str,
}

impl Role {
    pub fn takes_writes(self) -> bool {
        self == Role::Primary
    }

    pub fn follows_primary(self) -> bool {
        self == Role::Backup
    }
}

/// The next role after `event`, or why the event is refused in `role`.
pub fn transition(role: Role, event: Event) -> Result<Role, IllegalTransition> {
    use Event::*;
    use Role::*;
    let refuse = |reason| Err(IllegalTransition { from: role, event, reason });
    match (role, event) {
        (Primary | Draining, Drain) => Ok(Draining),
        (_, Drain) => refuse("only a primary can be drained"),

        (Draining | Primary, LeaseExpired | Resume) => Ok(Primary),
        (_, LeaseExpired | Resume) => refuse("only a drained primary can resume writes"),

        (Draining | Backup, Demote) => Ok(Backup),
        (Primary, Demote) => refuse("drain the primary first, so that no commit is in flight"),
        (_, Demote) => refuse("only a drained primary can be demoted"),

        (Backup | Primary, Promote) => Ok(Primary),
        (Draining, Promote) => refuse("a draining primary is being switched away from, not promoted"),
        (_, Promote) => refuse("a fenced or rejoining node must be rejoined before it can be promoted"),

        (Primary | Draining | Fenced, HigherEpochSeen) => Ok(Fenced),
        (Backup | Rejoining, HigherEpochSeen) => Ok(role),

        (Fenced | Backup | Rejoining, RejoinStarted) => Ok(Rejoining),
        (Primary | Draining, RejoinStarted) => {
            refuse("a node taking writes must be fenced or demoted before it is rejoined")
        }

        (Rejoining | Backup, RejoinFinished) => Ok(Backup),
        (_, RejoinFinished) => refuse("only a rejoining node can finish a rejoin"),

        (Backup, PromotionFailed) => Ok(Fenced),
        (_, PromotionFailed) => refuse("only a backup is promoted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 5] = [Role::Primary, Role::Backup, Role::Draining, Role::Fenced, Role::Rejoining];
    const EVENTS: [Event; 9] = [
        Event::Drain,
        Event::LeaseExpired,
        Event::Resume,
        Event::Demote,
        Event::Promote,
        Event::HigherEpochSeen,
        Event::RejoinStarted,
        Event::RejoinFinished,
        Event::PromotionFailed,
    ];

    #[test]
    fn switchover_failover_and_rejoin_paths() {
        let old = [Event::Drain, Event::Demote].iter().try_fold(Role::Primary, |r, e| transition(r, *e));
        assert_eq!(old, Ok(Role::Backup));
        assert_eq!(transition(Role::Backup, Event::Promote), Ok(Role::Primary));
        let rejoined = [Event::HigherEpochSeen, Event::RejoinStarted, Event::RejoinFinished]
            .iter()
            .try_fold(Role::Primary, |r, e| transition(r, *e));
        assert_eq!(rejoined, Ok(Role::Backup));
        assert_eq!(transition(Role::Draining, Event::LeaseExpired), Ok(Role::Primary));
    }

    #[test]
    fn a_higher_epoch_never_leaves_a_writer() {
        for role in ROLES {
            let next = transition(role, Event::HigherEpochSeen).unwrap();
            assert!(!next.takes_writes(), "{role:?} stayed a writer");
        }
    }

    #[test]
    fn repeated_events_are_idempotent_where_the_orchestrator_may_retry() {
        for event in [Event::Drain, Event::Demote, Event::Promote, Event::Resume, Event::RejoinStarted] {
            for role in ROLES {
                if let Ok(next) = transition(role, event) {
                    assert_eq!(transition(next, event), Ok(next), "{event:?} from {role:?} is not idempotent");
                }
            }
        }
    }

    #[test]
    fn only_primary_takes_writes_and_refusals_say_why() {
        for role in ROLES {
            assert_eq!(role.takes_writes(), role == Role::Primary);
            for event in EVENTS {
                if let Err(err) = transition(role, event) {
                    assert!(!err.reason.is_empty());
                    assert!(err.to_string().contains(role.name()));
                }
            }
        }
        assert!(transition(Role::Primary, Event::Demote).is_err());
        assert!(transition(Role::Fenced, Event::Promote).is_err());
    }
}
