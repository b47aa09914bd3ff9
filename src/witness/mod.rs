//! The witness: etcd, as the third party that lets a two-node pair fail over by itself.
//!
//! ## Job
//! [`etcd`] is the client. The decisions (who may hold the leader key, when to fence, when a
//! backup may take over) are not made here but by the pair's engine; this module only carries
//! them out against etcd and reports what it saw.

pub mod agent;
pub mod command;
pub mod etcd;

pub use agent::policy;
pub use etcd::{Cas, Compare, EtcdClient, EtcdError, EtcdTls, KeyValue, Lease};
