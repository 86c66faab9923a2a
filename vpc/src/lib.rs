//! The VPC: a WireGuard network between the gateway and the app CVMs.
//!
//! - [`wireguard`]: the interface behind one narrow trait: a userspace daemon through its UAPI
//!   socket, or the kernel module through the `wg` tool; keys made in-process.
//! - [`leases`]: instance addresses from the configured prefix, kept in the `Store` (one key
//!   per address, taken by compare-and-swap: no two peers ever share one).
//! - [`gateways`]: one record per gateway node (address, WireGuard key, endpoint): several
//!   nodes of a cluster serve one VPC, each instance a peer of every node.
//! - [`register`]: the checks an app CVM's registration passes (quote, policy, binding).
//! - [`node`]: the gateway at run time: interface, RA-TLS registration listener, liveness
//!   into the route table, lease reclaim.
//! - [`mesh`]: who may reach whom (`reach`), each agent's netmap, the instance names.
//! - [`coordinator`]: the mesh's coordinator on the gateway's VPC address (netmaps by long
//!   poll, whois, DNS), answering each instance about what it may see.
//! - [`agent`]: `gatehouse agent`, the app CVM's side.

pub mod agent;
pub mod agent_mesh;
pub mod coordinator;
pub mod gateways;
pub mod leases;
pub mod mesh;
pub mod node;
pub mod register;
pub mod wireguard;

/// Why a VPC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    /// The WireGuard interface refused or could not be reached.
    #[error("wireguard {interface}: {reason}")]
    WireGuard {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
    /// Every address of the prefix is leased.
    #[error("address pool {prefix} exhausted ({leased} leases)")]
    PoolExhausted {
        /// The prefix.
        prefix: String,
        /// How many leases exist.
        leased: usize,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
    /// A stored lease could not be read.
    #[error("lease {key}: {reason}")]
    Lease {
        /// The store key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The VPC could not be set up (policy files, the registration certificate).
    #[error("{0}")]
    Config(String),
    /// Key generation or encoding failed.
    #[error("key: {0}")]
    Key(String),
}
