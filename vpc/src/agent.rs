//! `gatehouse agent`: the app CVM's side of the VPC.
//!
//! Its WireGuard key is made once and kept sealed in the state directory. To register it
//! connects to the gateway's registration listener, checks the gateway's RA-TLS certificate
//! against the gateway policy *before sending anything* (collateral for the gateway's quote
//! comes from the agent's own TEE source: the simulator's, or the PCCS), asks for a nonce,
//! quotes `SHA-512("gatehouse-register-v1:" ‖ app_id ‖ key ‖ nonce)`, and sends it. With the
//! answer it configures its own interface: address, the gateway as a peer for its own
//! address, the keepalive the gateway asked for; then it follows its netmap
//! ([`super::agent_mesh`]): the instances it may talk to become direct peers. Then it watches the interface and
//! registers again (backing off 1 s … 60 s) when the daemon lost its configuration or the
//! gateway stops completing handshakes (it restarted from scratch or forgot the lease).

use super::register::{report_data, Refusal, RegisterRequest, RegisterResponse};
use super::wireguard::{base64, parse_key, set_address, KeyPair, PeerConfig, WireGuard};
use super::VpcError;
use bytes::Bytes;
use gatehouse_attest::pccs::CollateralSource;
use gatehouse_attest::policy::Policy;

use gatehouse_attest::QuoteProvider;
use gatehouse_store::Sealer;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The sealing name of the agent's WireGuard key.
const KEY_NAME: &str = "vpc/agent-wireguard-key";
/// Connect and exchange bound for one registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the interface is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A session WireGuard would have re-keyed by now (REJECT_AFTER_TIME is 180 s): the
/// gateway no longer answers our key.
const HANDSHAKE_LOST: Duration = Duration::from_secs(200);
/// How long after configuring the first handshake may take.
const FIRST_HANDSHAKE: Duration = Duration::from_secs(15);
/// Back-off bounds between failed registrations.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Why a registration attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway refused us, naming the check.
    #[error("{0}")]
    Refused(Refusal),
    /// The gateway's RA-TLS certificate did not pass the gateway policy: nothing was sent.
    #[error("gateway not trusted (nothing sent): {0}")]
    UntrustedGateway(String),
    /// Anything else (network, TEE, interface).
    #[error("{0}")]
    Other(String),
}

impl From<VpcError> for AgentError {
    fn from(e: VpcError) -> Self {
        AgentError::Other(e.to_string())
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Other(format!("{what}: {e}"))
}

/// What the agent needs.
pub struct Agent {
    /// `https://host:port` of the gateway's registration listener.
    pub register_url: String,
    /// The app id to register as.
    pub app_id: String,
    /// The gateway must meet this.
    pub gateway_policy: Policy,
    /// Our quotes.
    pub provider: Arc<dyn QuoteProvider>,
    /// Collateral for the gateway's quote.
    pub collateral: Arc<CollateralSource>,
    /// Our interface.
    pub wg: Arc<dyn WireGuard>,
    /// Our key.
    pub key: KeyPair,
    /// Where the mesh peers' identities are kept (`peers.json`), if anywhere.
    pub identity_file: Option<PathBuf>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({} → {})", self.app_id, self.register_url)
    }
}

/// The agent's key: unsealed from `<state_dir>/wireguard.key`, or made and written sealed
/// (atomically, mode 0600).
pub fn load_or_create_key(
    state_dir: &std::path::Path,
    sealer: &dyn Sealer,
) -> Result<KeyPair, VpcError> {
    let path: PathBuf = state_dir.join("wireguard.key");
    let err = |e: &dyn std::fmt::Display| VpcError::Key(format!("{}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(sealed) => {
            let private = sealer.unseal(KEY_NAME, &sealed).map_err(|e| err(&e))?;
            KeyPair::from_private(&private)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            let sealed = sealer.seal(KEY_NAME, key.private()).map_err(|e| err(&e))?;
            std::fs::create_dir_all(state_dir).map_err(|e| err(&e))?;
            gatehouse_store::write_atomic(&path, &sealed, 0o600).map_err(|e| err(&e))?;
            Ok(key)
        }
        Err(e) => Err(err(&e)),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Agent {
    /// One registration, then the interface configured from the answer.
    pub async fn register_once(&self) -> Result<RegisterResponse, AgentError> {
        let (resp, endpoint) = self.register().await?;
        self.apply(&resp, endpoint).await?;
        Ok(resp)
    }

    /// One registration, the interface untouched: the answer and the gateway's WireGuard
    /// endpoint.
    pub async fn register(&self) -> Result<(RegisterResponse, SocketAddr), AgentError> {
        let (mut sender, gateway_ip) = tokio::time::timeout(REGISTER_TIMEOUT, self.connect())
            .await
            .map_err(|_| other("registration", "no answer within 30s"))??;
        let exchange = async {
            let (status, body) = post(&mut sender, "/v1/challenge", Vec::new()).await?;
            if status != 200 {
                return Err(other(
                    "challenge",
                    format!("HTTP {status}: {}", lossy(&body)),
                ));
            }
            #[derive(serde::Deserialize)]
            struct Challenge {
                nonce: String,
            }
            let c: Challenge = serde_json::from_slice(&body).map_err(|e| other("challenge", e))?;
            let nonce: [u8; 32] = gatehouse_attest::hex::decode_array(&c.nonce)
                .ok_or_else(|| other("challenge", "nonce is not 32 bytes of hex"))?;
            let evidence = self
                .provider
                .quote(report_data(&self.app_id, &self.key.public, &nonce))
                .await
                .map_err(|e| other("quote", e))?;
            let req = RegisterRequest {
                app_id: self.app_id.clone(),
                wg_public_key: base64(&self.key.public),
                nonce: c.nonce,
                evidence,
            };
            let body = serde_json::to_vec(&req).map_err(|e| other("request", e))?;
            let (status, body) = post(&mut sender, "/v1/register", body).await?;
            match status {
                200 => serde_json::from_slice(&body).map_err(|e| other("answer", e)),
                403 => Err(match serde_json::from_slice::<Refusal>(&body) {
                    Ok(r) => AgentError::Refused(r),
                    Err(_) => other("register", format!("HTTP 403: {}", lossy(&body))),
                }),
                s => Err(other("register", format!("HTTP {s}: {}", lossy(&body)))),
            }
        };
        let resp: RegisterResponse = tokio::time::timeout(REGISTER_TIMEOUT, exchange)
            .await
            .map_err(|_| other("registration", "no answer within 30s"))??;
        let endpoint = resp
            .endpoint
            .unwrap_or(SocketAddr::new(gateway_ip, resp.listen_port));
        Ok((resp, endpoint))
    }

    /// TLS to the registration listener; the gateway's certificate is checked against the
    /// gateway policy before the connection is used.
    async fn connect(&self) -> Result<(Sender, std::net::IpAddr), AgentError> {
        let uri: hyper::Uri = self
            .register_url
            .parse()
            .map_err(|e| other(&self.register_url, e))?;
        let host = uri
            .host()
            .ok_or_else(|| other(&self.register_url, "no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(8444);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| other(&format!("connect {host}:{port}"), e))?;
        let gateway_ip = tcp.peer_addr().map_err(|e| other("connect", e))?.ip();
        let config = gatehouse_attest::ratls::check_after_handshake()
            .map_err(|e| other("TLS", e))?
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| other(&host, e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| other(&format!("TLS with {host}:{port}"), e))?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| AgentError::UntrustedGateway("no certificate".into()))?
            .clone();
        self.check_gateway(&cert).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| other("HTTP", e))?;
        tokio::spawn(conn);
        Ok((sender, gateway_ip))
    }

    async fn check_gateway(&self, cert: &[u8]) -> Result<(), AgentError> {
        gatehouse_attest::ratls::check_peer(&self.gateway_policy, &self.collateral, cert)
            .await
            .map_err(|e| AgentError::UntrustedGateway(e.to_string()))?;
        Ok(())
    }

    /// Our interface from the answer: key, address, the gateway we registered with as the
    /// peer for the whole prefix, and each other gateway node of its cluster as the peer for
    /// its own address (WireGuard routes by the longest allowed prefix, so an answer to a
    /// request from node B goes back to B).
    async fn apply(&self, resp: &RegisterResponse, endpoint: SocketAddr) -> Result<(), VpcError> {
        let key = |text: &str| {
            parse_key(text)
                .ok_or_else(|| VpcError::Key("a gateway's key is not base64 of 32 bytes".into()))
        };
        let gateway = key(&resp.gateway_public_key)?;
        // The gateway for its own address only: other instances are direct peers (the
        // mesh), each for its /32, and an address with no peer is reached by nobody.
        let mut peers = vec![PeerConfig {
            public_key: gateway,
            allowed_ips: vec![(resp.gateway_address, 32)],
            endpoint: Some(endpoint),
            keepalive: resp.keepalive,
        }];
        for g in &resp.gateways {
            peers.push(PeerConfig {
                public_key: key(&g.public_key)?,
                allowed_ips: vec![(g.address, 32)],
                endpoint: Some(g.endpoint),
                keepalive: resp.keepalive,
            });
        }
        self.wg.configure(&self.key, None).await?;
        let (_, present) = self.wg.state().await?;
        // Gateway keys of the past go, and mesh peers too: the netmap, followed right
        // after, brings back those that still belong.
        for p in present
            .iter()
            .filter(|p| !peers.iter().any(|q| q.public_key == p.public_key))
        {
            self.wg.remove_peer(&p.public_key).await?;
        }
        for peer in &peers {
            self.wg.set_peer(peer).await?;
        }
        set_address(self.wg.interface(), resp.address, resp.prefix_len).await
    }

    /// Registers, then keeps the registration: returns only with `once` (after the first
    /// success, or with the first error).
    pub async fn run(&self, once: bool) -> Result<RegisterResponse, AgentError> {
        let mut backoff = BACKOFF.0;
        loop {
            match self.register_once().await {
                Ok(resp) => {
                    println!(
                        "gatehouse agent: registered {} at {}/{} (gateway {} over WireGuard, keepalive {}s)",
                        self.app_id, resp.address, resp.prefix_len, resp.gateway_address, resp.keepalive
                    );
                    if once {
                        return Ok(resp);
                    }
                    backoff = BACKOFF.0;
                    let why = tokio::select! {
                        why = self.hold(&resp) => why,
                        () = self.follow_netmap(&resp) => "the netmap stopped".into(),
                    };
                    println!("gatehouse agent: registering again: {why}");
                }
                Err(e) => {
                    println!("gatehouse agent: registration failed: {e}");
                    if once {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(..250))).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Watches the interface until the registration must be renewed; says why.
    async fn hold(&self, resp: &RegisterResponse) -> String {
        let configured = Instant::now();
        let gateway = parse_key(&resp.gateway_public_key);
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let (own, peers) = match self.wg.state().await {
                Ok(s) => s,
                Err(e) => return format!("interface: {e}"),
            };
            if own != Some(self.key.public) {
                return "the WireGuard interface lost its configuration".into();
            }
            let Some(peer) = peers.iter().find(|p| Some(p.public_key) == gateway) else {
                return "the gateway peer is gone from the interface".into();
            };
            match peer.last_handshake {
                None if configured.elapsed() > FIRST_HANDSHAKE => {
                    return format!("no handshake with the gateway within {FIRST_HANDSHAKE:?}")
                }
                Some(t) if age(t) > HANDSHAKE_LOST => {
                    return format!("no handshake with the gateway for {:?}", age(t))
                }
                _ => {}
            }
        }
    }
}

fn age(t: SystemTime) -> Duration {
    t.elapsed().unwrap_or_default()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

async fn post(sender: &mut Sender, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), AgentError> {
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, "gatehouse-vpc-register")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| other(path, e))?;
    let resp = sender.send_request(req).await.map_err(|e| other(path, e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| other(path, e))?
        .to_bytes();
    Ok((status, body))
}
