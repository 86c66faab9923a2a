//! The nodes of a Gatehouse cluster as the shared store sees them.
//!
//! Each node registers itself as the lock `nodes/<name>` (with etcd: a key under a lease its
//! process keeps alive, gone within [`REGISTRATION_TTL`] of its death) whose holder text is
//! its [`NodeInfo`], and writes a heartbeat (`heartbeats/<name>`) every [`HEARTBEAT`]. The
//! heartbeat doubles as the node's probe of the store: [`Health`] says whether the store
//! answers, and a node that loses it keeps serving what it holds (fail static) and says so
//! once in its log and continuously in `/metrics`. [`status`] reads it all back for
//! `gatehouse cluster status`: members, their last heartbeat, who holds each renewal lock.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod membership;
mod status;

pub use membership::{node_name, Health, Membership, NodeInfo, HEARTBEAT, REGISTRATION_TTL};
pub use status::{status, ClusterStatus, Member, RenewalLock};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gatehouse_store::StoreError),
    /// A stored record did not parse.
    #[error("{key}: {reason}")]
    Record {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}
