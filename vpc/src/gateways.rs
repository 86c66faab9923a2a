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
//!
//! Records are sealed whole under the store's sealer (the cluster key on etcd), bound to their
//! key: a record forged by whoever runs etcd does not open, so it never becomes an agent's
//! peer (which would let it send into the app's tunnel).

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
    /// Its private key (base64; the whole record is sealed).
    pub private_key: String,
}

/// The addresses gateway records are stored under (opened or not: a record that does not
/// open still keeps its address out of the lease pool).
pub async fn addresses(store: &dyn Store) -> Result<Vec<Ipv4Addr>, VpcError> {
    Ok(store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(PREFIX)?.parse().ok())
        .collect())
}

/// Every gateway record that opens under `sealer`, in address order.
pub async fn all(store: &dyn Store, sealer: &dyn Sealer) -> Result<Vec<GatewayRecord>, VpcError> {
    let mut out: Vec<GatewayRecord> = store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, v)| open(sealer, &key, &v.value))
        .collect();
    out.sort_by_key(|g| u32::from(g.address));
    Ok(out)
}

fn open(sealer: &dyn Sealer, key: &str, sealed: &[u8]) -> Option<GatewayRecord> {
    let plain = sealer.unseal(key, sealed).ok()?;
    let rec: GatewayRecord = serde_json::from_slice(&plain).ok()?;
    (format!("{PREFIX}{}", rec.address) == key).then_some(rec)
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
    if store.get(&format!("vpc/leases/{address}")).await?.is_some() {
        return Err(VpcError::Config(format!(
            "vpc.gateway_address {address} is leased to an instance: give this node an \
             address outside the leases"
        )));
    }
    loop {
        let current = store.get(&key).await?;
        let opened = current.as_ref().and_then(|v| open(sealer, &key, &v.value));
        if let Some(rec) = &opened {
            let member = gatehouse_store::lock_key(&format!("nodes/{}", rec.node))?;
            if rec.node != node && store.get(&member).await?.is_some() {
                return Err(VpcError::Config(format!(
                    "vpc.gateway_address {address} belongs to the live node {}: each node \
                     needs its own address",
                    rec.node
                )));
            }
        }
        let kept = opened
            .and_then(|rec| b64.decode(&rec.private_key).ok())
            .and_then(|k| KeyPair::from_private(&k).ok());
        let pair = match (kept, &current) {
            (Some(p), _) => p,
            (None, Some(_)) => {
                tracing::warn!(%address, "the stored record of this gateway address does not open (another sealing key, or forged); replaced with a new key: agents register again");
                KeyPair::generate()?
            }
            (None, None) => match store.get(LEGACY_KEY).await? {
                Some(v) => match sealer.unseal(LEGACY_KEY, &v.value) {
                    Ok(k) => KeyPair::from_private(&k)?,
                    Err(_) => KeyPair::generate()?,
                },
                None => KeyPair::generate()?,
            },
        };
        let record = GatewayRecord {
            address,
            node: node.to_owned(),
            public_key: base64(&pair.public),
            endpoint: config.endpoint,
            listen_port: config.listen_port,
            private_key: b64.encode(pair.private()),
        };
        let plain = gatehouse_store::Zeroizing::new(
            serde_json::to_vec(&record).expect("a record serializes"),
        );
        let sealed = sealer
            .seal(&key, &plain)
            .map_err(|e| VpcError::Key(format!("{key}: {e}")))?;
        let expected = current.map_or(0, |v| v.version);
        if store
            .compare_and_swap(&key, expected, &sealed)
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
