//! Joining: a member hands the cluster key to a node only over mutual RA-TLS, each side
//! checking the other's quote against the cluster policy before a byte of the key moves.
//!
//! Both ends present their RA-TLS certificate ([`RotatingCert`]: a key made in the process,
//! bound by its quote). The handshake checks possession of the keys; the quotes are checked
//! right after it ([`check_peer`], collateral for the peer's platform), because collateral
//! is fetched asynchronously. The exchange is one JSON object each way, framed by the end of
//! the stream: the joiner sends `{"node": name}`, the member answers `{"key", "key_id"}` or
//! `{"refused": reason}`. The key travels only inside TLS 1.3 between two attested TEEs.
//!
//! The listener is capped: [`MAX_JOINS`] at a time (more are dropped at once), [`DEADLINE`]
//! for a whole exchange, [`MAX_REQUEST`] bytes of request.

use crate::key::ClusterKey;
use gatehouse_attest::pccs::CollateralSource;
use gatehouse_attest::policy::Policy;
use gatehouse_attest::ratls::check_peer;
use gatehouse_attest::ratls_cert::RotatingCert;
use gatehouse_store::Zeroizing;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Joins served at once.
pub const MAX_JOINS: usize = 8;
/// The bound of one exchange: connect, handshake, both checks, request and answer.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// The largest request read.
pub const MAX_REQUEST: u64 = 4096;
/// The largest answer read.
const MAX_ANSWER: u64 = 4096;

/// This node's attested identity and the policy its peers must pass.
pub struct Attested {
    /// The policy a peer's quote must pass (both ways).
    pub policy: Policy,
    /// Collateral for peers' quotes.
    pub collateral: Arc<CollateralSource>,
    /// This node's RA-TLS certificate.
    pub cert: Arc<RotatingCert>,
}

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    node: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JoinAnswer {
    Key { key: String, key_id: String },
    Refused { refused: String },
}

/// What asking one member gave.
pub enum Asked {
    /// The key.
    Key(ClusterKey),
    /// The member refused this node (the reason it gave).
    Refused(String),
    /// No answer, or a member this node does not trust.
    Failed(String),
}

/// The default cluster policy: this node's own measurements (MRTD and RTMR0-3, from a quote
/// of itself), so only nodes running the same software join; the simulator's mock root is
/// trusted only by a simulated node.
pub async fn own_policy(
    provider: &dyn gatehouse_attest::QuoteProvider,
) -> Result<Policy, crate::ClusterError> {
    let evidence = provider
        .quote([0u8; 64])
        .await
        .map_err(|e| crate::ClusterError::Key(format!("quoting this node: {e}")))?;
    let mut policy = gatehouse_attest::policy::same_measurements(&evidence)
        .map_err(|e| crate::ClusterError::Key(format!("this node's measurements: {e}")))?;
    policy.insecure_trust_simulator_root = provider.kind() == gatehouse_attest::TeeKind::Simulated;
    Ok(policy)
}

/// Asks the member at `addr` for the cluster key, as `node`.
pub async fn ask(addr: &str, node: &str, attested: &Attested) -> Asked {
    match tokio::time::timeout(DEADLINE, exchange(addr, node, attested)).await {
        Ok(asked) => asked,
        Err(_) => Asked::Failed(format!("no answer within {DEADLINE:?}")),
    }
}

async fn exchange(addr: &str, node: &str, attested: &Attested) -> Asked {
    let failed = |what: &str, e: &dyn std::fmt::Display| Asked::Failed(format!("{what}: {e}"));
    let config = match attested.cert.client_config() {
        Ok(c) => c,
        Err(e) => return failed("TLS", &e),
    };
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return failed("connect", &e),
    };
    let name =
        rustls_pki_types::ServerName::try_from("gatehouse-cluster-join").expect("a valid name");
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return failed("TLS", &e),
    };
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return Asked::Failed("the member presented no certificate".into());
    };
    // The member must pass the cluster policy too: a key from anyone else could be known to
    // whoever runs etcd, and every secret sealed under it would be theirs.
    if let Err(e) = check_peer(&attested.policy, &attested.collateral, cert).await {
        return failed("the member fails the cluster policy", &e);
    }
    let request = serde_json::to_vec(&JoinRequest { node: node.into() }).expect("serializes");
    if let Err(e) = send(&mut tls, &request).await {
        return failed("send", &e);
    }
    let body = match read_capped(&mut tls, MAX_ANSWER).await {
        Ok(b) => Zeroizing::new(b),
        Err(e) => return failed("answer", &e),
    };
    match serde_json::from_slice::<JoinAnswer>(&body) {
        Ok(JoinAnswer::Refused { refused }) => Asked::Refused(refused),
        Ok(JoinAnswer::Key { key, key_id }) => match gatehouse_attest::hex::decode(&key) {
            Some(bytes) if bytes.len() == 32 => {
                let key = ClusterKey::from_bytes(Zeroizing::new(bytes));
                if key.id() == key_id {
                    Asked::Key(key)
                } else {
                    Asked::Failed("the key does not match the id sent with it".into())
                }
            }
            _ => Asked::Failed("the key is not 32 bytes of hex".into()),
        },
        Err(_) => Asked::Failed("the answer is not a join answer".into()),
    }
}

async fn send<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    s.write_all(body).await?;
    s.shutdown().await
}

async fn read_capped<S: AsyncRead + Unpin>(s: &mut S, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    s.take(cap + 1).read_to_end(&mut body).await?;
    if body.len() as u64 > cap {
        return Err(std::io::Error::other(format!("more than {cap} bytes")));
    }
    Ok(body)
}

/// Serves joins on `listener` with `key`, until dropped; the RA-TLS certificate is rotated
/// meanwhile.
pub async fn serve(listener: TcpListener, key: Arc<ClusterKey>, attested: Arc<Attested>) {
    let tls = match attested.cert.server_config(true) {
        Ok(c) => tokio_rustls::TlsAcceptor::from(Arc::new(c)),
        Err(e) => {
            tracing::error!("cluster join listener: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_JOINS));
    let accepting = async {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cluster join listener: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "cluster join refused: {MAX_JOINS} joins in progress");
                continue;
            };
            let (tls, key, attested) = (tls.clone(), key.clone(), attested.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let served =
                    tokio::time::timeout(DEADLINE, answer(tcp, tls, &key, &attested)).await;
                match served {
                    Ok(Ok(Handed::Key(node))) => {
                        tracing::info!(%peer, %node, "cluster key handed to an attested node")
                    }
                    Ok(Ok(Handed::Refused(node, why))) => {
                        tracing::warn!(%peer, %node, "cluster join refused: {why}")
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, "cluster join failed: {e}"),
                    Err(_) => tracing::warn!(%peer, "cluster join timed out after {DEADLINE:?}"),
                }
            });
        }
    };
    tokio::select! {
        () = accepting => {}
        () = attested.cert.clone().rotate() => {}
    }
}

enum Handed {
    Key(String),
    Refused(String, String),
}

async fn answer(
    tcp: TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    key: &ClusterKey,
    attested: &Attested,
) -> std::io::Result<Handed> {
    let mut tls = tls.accept(tcp).await?;
    let request = read_capped(&mut tls, MAX_REQUEST).await?;
    let node = serde_json::from_slice::<JoinRequest>(&request)
        .map(|r| r.node.chars().take(128).collect::<String>())
        .unwrap_or_else(|_| "<unnamed>".into());
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let verdict = match cert {
        None => Err("no client certificate".to_owned()),
        Some(cert) => check_peer(&attested.policy, &attested.collateral, &cert)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    let (body, handed) = match verdict {
        Ok(()) => {
            let hex = Zeroizing::new(gatehouse_attest::hex::encode(key.bytes()));
            let body = format!(r#"{{"key":"{}","key_id":"{}"}}"#, *hex, key.id());
            (Zeroizing::new(body.into_bytes()), Handed::Key(node))
        }
        Err(why) => {
            let refused = format!("{node} fails the cluster policy: {why}");
            let body = serde_json::to_vec(&JoinAnswer::Refused { refused }).expect("serializes");
            (Zeroizing::new(body), Handed::Refused(node, why))
        }
    };
    send(&mut tls, &body).await?;
    Ok(handed)
}
