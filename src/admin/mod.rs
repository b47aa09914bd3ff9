//! What an admin runs besides the orchestration commands (which are in `orchestrator`), and the
//! control-port client every admin command uses.
//!
//! ## Parts
//! - [`client`]: admin requests to a node's control port (mutual TLS, admin certificate), and
//!   `status` rendered for people. [`protocol`]: the typed replies.
//! - [`init`]: `hotpair init` and `reinit`. [`certs`]: `hotpair certs rotate|finish-ca`.
//! - [`backup`] and [`restore`]: online backups and a new pair from one.
//! - [`orphans`]: `hotpair orphans show|apply`.
//! - [`journal_tools`]: `hotpair journal ls|dump|verify|find-time`, offline.
//! - [`demo`]: `hotpair demo`, the durable core on one node, and the crash tests' child process.
//!
//! ## Invariants
//! - A command refused or failed with nothing changed exits 1; every command that writes
//!   files either finishes or removes what it wrote (each module says how).

pub mod backup;
pub mod certs;
pub mod client;
pub mod demo;
pub mod init;
pub mod journal_tools;
pub mod orphans;
pub mod protocol;
pub mod restore;
