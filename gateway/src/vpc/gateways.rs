//! The VPC's gateway nodes as the store holds them: one record per gateway address,
//! `vpc/gateways/<address>`, with the node's WireGuard public key, where agents reach it, and
//! its private key sealed (under the cluster key on etcd). One node, one address, one key:
//! an agent registered through any node gets every node as a peer (the registering one for the
//! whole prefix, each other one for its own address), and every node adds every lease as a
//! peer, so an instance receives traffic from all of them.
//!
//! A node claims its configured address by compare-and-swap at start; a restarted node takes
//! its record back (same address, same key), a node configured with the address of a live
//! node is refused, and the address of a leased instance cannot become a gateway's.

use super::wireguard::{base64, parse_key, KeyPair};
use super::VpcError;
use gatehouse_config::VpcConfig;
use gatehouse_store::{Sealer, Store};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// Where the records live.
pub const PREFIX: &str = "vpc/gateways/";
/// Where a single node kept its key before nodes had records (adopted once).
const LEGACY_KEY: &str = "vpc/wireguard-key";

/// One gateway node's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// Its VPC address.
    pub address: Ipv4Addr,
    /// The node that holds it.
    pub node: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Where agents reach its WireGuard (`[vpc] endpoint`), if configured.
    pub endpoint: Option<SocketAddr>,
    /// Its WireGuard port.
    pub listen_port: u16,
    /// Its private key, sealed under the store's sealer (base64).
    pub sealed_key: String,
}

fn record_err(key: &str, e: impl std::fmt::Display) -> VpcError {
    VpcError::Lease {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// Every gateway record, in address order.
pub async fn all(store: &dyn Store) -> Result<Vec<GatewayRecord>, VpcError> {
    let mut out = Vec::new();
    for (key, v) in store.list(PREFIX).await? {
        out.push(
            serde_json::from_slice::<GatewayRecord>(&v.value).map_err(|e| record_err(&key, e))?,
        );
    }
    out.sort_by_key(|g| u32::from(g.address));
    Ok(out)
}

fn unseal(sealer: &dyn Sealer, name: &str, sealed: &[u8]) -> Option<KeyPair> {
    let private = sealer.unseal(name, sealed).ok()?;
    KeyPair::from_private(&private).ok()
}

/// Claims `config.gateway_address` for `node`: its key (kept from the record, else the
/// legacy single-node key, else new) and the record written by compare-and-swap.
pub async fn claim(
    store: &dyn Store,
    sealer: &dyn Sealer,
    config: &VpcConfig,
    node: &str,
) -> Result<KeyPair, VpcError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let address = config.gateway_address;
    let key = format!("{PREFIX}{address}");
    if let Some(v) = store.get(&format!("vpc/leases/{address}")).await? {
        let holder = String::from_utf8_lossy(&v.value);
        return Err(VpcError::Config(format!(
            "vpc.gateway_address {address} is leased to an instance ({holder}): give this node \
             an address outside the leases"
        )));
    }
    loop {
        let current = store.get(&key).await?;
        let (expected, pair) = match &current {
            Some(v) => {
                let rec: GatewayRecord =
                    serde_json::from_slice(&v.value).map_err(|e| record_err(&key, e))?;
                let member = gatehouse_store::lock_key(&format!("nodes/{}", rec.node))?;
                if rec.node != node && store.get(&member).await?.is_some() {
                    return Err(VpcError::Config(format!(
                        "vpc.gateway_address {address} belongs to the live node {}: each node \
                         needs its own address",
                        rec.node
                    )));
                }
                let sealed = b64.decode(&rec.sealed_key).unwrap_or_default();
                let pair = match unseal(sealer, &key, &sealed) {
                    Some(p) => p,
                    None => {
                        tracing::warn!(%address, "the stored WireGuard key of this address does not open (another sealing key); a new one is made and agents register again");
                        KeyPair::generate()?
                    }
                };
                (v.version, pair)
            }
            None => {
                let legacy = match store.get(LEGACY_KEY).await? {
                    Some(v) => unseal(sealer, LEGACY_KEY, &v.value),
                    None => None,
                };
                (0, legacy.map_or_else(KeyPair::generate, Ok)?)
            }
        };
        let sealed = sealer
            .seal(&key, pair.private())
            .map_err(|e| VpcError::Key(format!("{key}: {e}")))?;
        let record = GatewayRecord {
            address,
            node: node.to_owned(),
            public_key: base64(&pair.public),
            endpoint: config.endpoint,
            listen_port: config.listen_port,
            sealed_key: b64.encode(sealed),
        };
        let bytes = serde_json::to_vec(&record).expect("a record serializes");
        if store
            .compare_and_swap(&key, expected, &bytes)
            .await?
            .is_ok()
        {
            return Ok(pair);
        }
        // Another process wrote the record meanwhile: look again.
    }
}

/// The peers an agent registered through `own` adds besides it: every other node that says
/// where agents reach it (one without `[vpc] endpoint` cannot be dialled and is left out).
pub fn others(all: &[GatewayRecord], own: Ipv4Addr) -> Vec<super::register::GatewayPeer> {
    all.iter()
        .filter(|g| g.address != own)
        .filter_map(|g| {
            Some(super::register::GatewayPeer {
                address: g.address,
                public_key: parse_key(&g.public_key).map(|k| base64(&k))?,
                endpoint: g.endpoint?,
            })
        })
        .collect()
}
