//! The nodes of a Gatehouse cluster as the shared store sees them.
//!
//! Each node registers itself as the lock `nodes/<name>` (with etcd: a key under a lease its
//! process keeps alive, gone within [`REGISTRATION_TTL`] of its death) whose holder text is
//! its [`NodeInfo`], and writes a heartbeat (`heartbeats/<name>`) every [`HEARTBEAT`]. The
//! heartbeat doubles as the node's probe of the store: [`Health`] says whether the store
//! answers, and a node that loses it keeps serving what it holds (fail static) and says so
//! once in its log and continuously in `/metrics`. [`status`] reads it all back for
//! `gatehouse cluster status`: members, their last heartbeat, who holds each renewal lock.
//!
//! [`key`]: the cluster sealing key, made in the first node's TEE; [`join`]: how later nodes
//! get it, over mutual RA-TLS against the cluster policy, and how members hand it out.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod join;
pub mod key;
mod membership;
mod status;

pub use join::Attested;
pub use key::{ClusterKey, Obtain};
pub use membership::{node_name, Health, Membership, NodeInfo, HEARTBEAT, REGISTRATION_TTL};
pub use status::{status, ClusterStatus, Member, RenewalLock};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gatehouse_store::StoreError),
    /// The cluster key could not be made, kept or read.
    #[error("cluster key: {0}")]
    Key(String),
    /// A member refused this node: it fails the cluster policy. It gets no key.
    #[error("cluster join refused by {member}: {reason}")]
    JoinRefused {
        /// The member that refused.
        member: String,
        /// What it said.
        reason: String,
    },
    /// No member handed the key over in time.
    #[error(
        "no cluster member handed over the cluster key within {waited:?} (last: {last}); start \
         a member that holds it, or, to found a new cluster key (every sealed record is then \
         ordered again), delete the store key cluster/genesis"
    )]
    NoMember {
        /// How long the node looked.
        waited: std::time::Duration,
        /// The last reason.
        last: String,
    },
    /// A stored record did not parse.
    #[error("{key}: {reason}")]
    Record {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}
