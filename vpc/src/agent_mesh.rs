//! The agent's half of the mesh: it follows its netmap (a long poll to the coordinator on
//! the gateway's VPC address, through the tunnel it already attested), makes each instance
//! it may talk to a direct WireGuard peer (/32, the endpoint the gateway saw), removes those
//! that left, and keeps the identity file current (`peers.json`: per peer address, its app,
//! ordinal, key and measurements) for a service mesh to authorize by attested identity.

use super::agent::Agent;
use super::mesh::{MeshPeer, Netmap};
use super::register::RegisterResponse;
use super::wireguard::{parse_key, PeerConfig};
use super::VpcError;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::time::Duration;

/// A long poll's bound (the coordinator answers within 25 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(35);
/// The pause after a failed poll.
const RETRY: Duration = Duration::from_secs(1);

impl Agent {
    /// Follows the netmap forever (returns only if the registration carries no
    /// coordinator): each change applied to the interface and the identity file.
    pub async fn follow_netmap(&self, resp: &RegisterResponse) {
        let Some(port) = resp.coordinator_port else {
            return std::future::pending().await;
        };
        let coordinator = SocketAddr::from((resp.gateway_address, port));
        let mut since: Option<u64> = None;
        loop {
            match tokio::time::timeout(POLL_TIMEOUT, fetch(coordinator, since)).await {
                Ok(Ok(map)) => {
                    if since != Some(map.version) {
                        match self.apply_netmap(resp, &map).await {
                            Ok(()) => since = Some(map.version),
                            Err(e) => {
                                tracing::warn!("mesh: applying netmap {}: {e}", map.version);
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!("mesh: netmap from {coordinator}: {e}");
                    tokio::time::sleep(RETRY).await;
                }
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    /// The interface's peers made the netmap's (the gateways untouched), then the identity
    /// file written.
    async fn apply_netmap(&self, resp: &RegisterResponse, map: &Netmap) -> Result<(), VpcError> {
        let mut gateways = vec![resp.gateway_public_key.as_str()];
        gateways.extend(resp.gateways.iter().map(|g| g.public_key.as_str()));
        let gateways: Vec<[u8; 32]> = gateways.into_iter().filter_map(parse_key).collect();
        let wanted: Vec<PeerConfig> = map
            .peers
            .iter()
            .filter_map(|p| {
                Some(PeerConfig {
                    public_key: parse_key(&p.public_key)?,
                    allowed_ips: vec![(p.address, 32)],
                    endpoint: p.endpoint,
                    keepalive: resp.keepalive,
                })
            })
            .collect();
        let (_, present) = self.wg.state().await?;
        for p in present.iter().filter(|p| {
            !gateways.contains(&p.public_key)
                && !wanted.iter().any(|w| w.public_key == p.public_key)
        }) {
            self.wg.remove_peer(&p.public_key).await?;
        }
        for peer in &wanted {
            // A peer already there keeps the endpoint its own handshakes found (the set
            // leaves an endpoint it does not name untouched).
            let known = present
                .iter()
                .any(|p| p.public_key == peer.public_key && p.endpoint.is_some());
            let mut peer = peer.clone();
            if known {
                peer.endpoint = None;
            }
            self.wg.set_peer(&peer).await?;
        }
        if let Some(path) = &self.identity_file {
            write_identities(path, &map.peers)?;
        }
        tracing::info!(
            version = map.version,
            peers = map.peers.len(),
            "mesh: netmap applied"
        );
        Ok(())
    }
}

/// `{ "<address>": MeshPeer, ... }`, written atomically.
fn write_identities(path: &std::path::Path, peers: &[MeshPeer]) -> Result<(), VpcError> {
    let by_address: std::collections::BTreeMap<String, &MeshPeer> =
        peers.iter().map(|p| (p.address.to_string(), p)).collect();
    let body = serde_json::to_vec_pretty(&by_address).expect("peers serialize");
    gatehouse_store::write_atomic(path, &body, 0o644)
        .map_err(|e| VpcError::Config(format!("{}: {e}", path.display())))
}

/// One netmap request over plain HTTP inside the tunnel.
async fn fetch(coordinator: SocketAddr, since: Option<u64>) -> Result<Netmap, String> {
    let tcp = tokio::net::TcpStream::connect(coordinator)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = match since {
        Some(v) => format!("/v1/netmap?since={v}"),
        None => "/v1/netmap".to_owned(),
    };
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "gatehouse-vpc-coordinator")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
