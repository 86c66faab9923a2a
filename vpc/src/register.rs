//! Registration: an app CVM proves what it runs and gets a VPC address and a WireGuard peer.
//!
//! The CVM asks for a nonce, then sends its quote whose report data is
//! `SHA-512("gatehouse-register-v1:" ‖ app_id ‖ wg_public_key(32) ‖ nonce(32))` (the two
//! fixed-length tails make the split unambiguous). Checks, in order, each refusal naming
//! itself and changing no state: app known → nonce ours and fresh → quote → policy →
//! binding → admission (`[admission]`, if any) → nonce unused → address lease → WireGuard peer (the lease is given back if the
//! peer cannot be set).
//!
//! Nonces are stateless: `issued_at(8) ‖ random(8) ‖ HMAC-SHA256(key, both)[..16]` under a
//! key made at start. Handing one out stores nothing, so no number of challenges from anyone
//! can evict a real agent's nonce. A nonce is remembered only once a quote binding it passed
//! every check (so only attested CVMs add entries), until it expires: single use.

use super::leases::{Lease, Leases};
use super::wireguard::{base64, parse_key, KeyPair, PeerConfig, WireGuard};
use super::VpcError;
use aws_lc_rs::rand::SystemRandom;
use gatehouse_attest::pccs::CollateralSource;
use gatehouse_attest::policy::Policy;
use gatehouse_attest::provider::Evidence;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Domain separation for registration report data.
pub const REGISTER_TAG: &[u8] = b"gatehouse-register-v1:";
/// How long a nonce may be used.
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// The longest app id echoed back in a refusal (app ids are at most 63 characters).
const MAX_ECHOED: usize = 64;

/// The report data a registration's quote must carry.
pub fn report_data(app_id: &str, wg_public_key: &[u8; 32], nonce: &[u8; 32]) -> [u8; 64] {
    gatehouse_attest::sha512(&[REGISTER_TAG, app_id.as_bytes(), wg_public_key, nonce])
}

/// What a CVM sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The app it registers as.
    pub app_id: String,
    /// Its WireGuard public key (base64).
    pub wg_public_key: String,
    /// The nonce from `/v1/challenge` (hex).
    pub nonce: String,
    /// Its quote and event log.
    pub evidence: Evidence,
}

/// What a registered CVM gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Its VPC address.
    pub address: Ipv4Addr,
    /// The VPC prefix length.
    pub prefix_len: u8,
    /// The VPC network address.
    pub network: Ipv4Addr,
    /// The gateway's VPC address.
    pub gateway_address: Ipv4Addr,
    /// The gateway's WireGuard public key (base64).
    pub gateway_public_key: String,
    /// Where to reach the gateway's WireGuard, if configured (else: the registration host).
    pub endpoint: Option<SocketAddr>,
    /// The gateway's WireGuard port.
    pub listen_port: u16,
    /// The persistent-keepalive interval the instance must use (seconds): the gateway takes
    /// an instance whose packets stop for `handshake_stale` out of rotation.
    pub keepalive: u16,
    /// The cluster's other gateway nodes: peers for their own address each, so traffic from
    /// any node reaches the instance (empty for a single node).
    #[serde(default)]
    pub gateways: Vec<GatewayPeer>,
    /// The mesh coordinator's port on `gateway_address` (netmaps, whois).
    #[serde(default)]
    pub coordinator_port: Option<u16>,
    /// The name server's port on `gateway_address`, and the names' domain.
    #[serde(default)]
    pub dns: Option<(u16, String)>,
}

/// Another gateway node, as an agent's peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPeer {
    /// Its VPC address (the peer's allowed IP, /32).
    pub address: Ipv4Addr,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Where to reach it.
    pub endpoint: SocketAddr,
}

/// The keepalive that keeps a live instance well inside `stale`: a third of it, 1-25 s.
pub fn keepalive_for(stale: Duration) -> u16 {
    (stale.as_secs() / 3).clamp(1, 25) as u16
}

/// Why a registration was refused: the check, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("registration refused: {check}: {reason}")]
pub struct Refusal {
    /// `app`, `nonce`, `quote`, `policy`, `binding`, `admission`, `pool`, `wireguard`,
    /// `request`.
    pub check: String,
    /// Why.
    pub reason: String,
}

fn refuse(check: &str, reason: impl std::fmt::Display) -> Refusal {
    Refusal {
        check: check.to_owned(),
        reason: reason.to_string(),
    }
}

/// The gateway's side of registration.
pub struct Registrar {
    /// Address leases.
    pub leases: Leases,
    wg: Arc<dyn WireGuard>,
    key: KeyPair,
    policies: HashMap<String, Policy>,
    collateral: Arc<CollateralSource>,
    config: gatehouse_config::VpcConfig,
    /// The key that MACs nonces.
    nonce_key: aws_lc_rs::hmac::Key,
    /// Nonces consumed by a successful registration, until they expire.
    used: Mutex<HashMap<[u8; 32], Instant>>,
    /// The operator's admission decision (`[admission]`), asked after the quote passed.
    pub admission: std::sync::OnceLock<Arc<dyn gatehouse::app_admission::AdmitApps>>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registrar({})", self.wg.interface())
    }
}

impl Registrar {
    /// A registrar over the interface `wg` (whose key is `key`), checking quotes with
    /// `collateral` against each app's policy.
    pub fn new(
        config: gatehouse_config::VpcConfig,
        leases: Leases,
        wg: Arc<dyn WireGuard>,
        key: KeyPair,
        policies: HashMap<String, Policy>,
        collateral: Arc<CollateralSource>,
    ) -> Registrar {
        Registrar {
            leases,
            wg,
            key,
            policies,
            collateral,
            config,
            nonce_key: aws_lc_rs::hmac::Key::generate(
                aws_lc_rs::hmac::HMAC_SHA256,
                &SystemRandom::new(),
            )
            .expect("random HMAC key"),
            used: Mutex::new(HashMap::new()),
            admission: std::sync::OnceLock::new(),
        }
    }

    /// The VPC settings.
    pub fn config(&self) -> &gatehouse_config::VpcConfig {
        &self.config
    }

    /// A fresh single-use nonce (nothing is stored).
    pub fn challenge(&self) -> Result<[u8; 32], VpcError> {
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&gatehouse_attest::unix_now().to_be_bytes());
        aws_lc_rs::rand::fill(&mut nonce[8..16]).map_err(|_| VpcError::Key("random".into()))?;
        let tag = aws_lc_rs::hmac::sign(&self.nonce_key, &nonce[..16]);
        nonce[16..].copy_from_slice(&tag.as_ref()[..16]);
        Ok(nonce)
    }

    /// Whether `nonce` is one of ours and not expired (its MAC checked in constant time).
    fn nonce_is_fresh(&self, nonce: &[u8; 32], now: u64) -> bool {
        let tag = aws_lc_rs::hmac::sign(&self.nonce_key, &nonce[..16]);
        let ours =
            aws_lc_rs::constant_time::verify_slices_are_equal(&tag.as_ref()[..16], &nonce[16..])
                .is_ok();
        let issued = u64::from_be_bytes(nonce[..8].try_into().expect("8 bytes"));
        ours && issued <= now && now - issued < NONCE_LIFETIME.as_secs()
    }

    /// Marks a nonce used; false if it already was.
    fn consume(&self, nonce: &[u8; 32]) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, t| t.elapsed() < NONCE_LIFETIME);
        used.insert(*nonce, Instant::now()).is_none()
    }

    /// Runs every check; on success the CVM holds a lease and is a WireGuard peer.
    pub async fn register(
        &self,
        req: &RegisterRequest,
        now: u64,
    ) -> Result<RegisterResponse, Refusal> {
        let policy = self.policies.get(&req.app_id).ok_or_else(|| {
            let shown: String = req.app_id.chars().take(MAX_ECHOED).collect();
            refuse("app", format!("{shown:?} may not register here"))
        })?;
        let wg_key = parse_key(&req.wg_public_key)
            .ok_or_else(|| refuse("request", "wg_public_key is not a base64 32-byte key"))?;
        let nonce: [u8; 32] = gatehouse_attest::hex::decode_array(&req.nonce)
            .ok_or_else(|| refuse("request", "nonce is not 32 bytes of hex"))?;
        if !self.nonce_is_fresh(&nonce, gatehouse_attest::unix_now()) {
            return Err(refuse(
                "nonce",
                "unknown or expired: ask /v1/challenge again",
            ));
        }
        let trust_sim = policy.insecure_trust_simulator_root;
        let collateral = self
            .collateral
            .for_quote(&req.evidence.quote, now)
            .await
            .map_err(|e| refuse("quote", e))?;
        let q = gatehouse_attest::verify::verify_quote(&req.evidence, &collateral, now, trust_sim)
            .map_err(|e| refuse("quote", e))?;
        policy
            .check(&q, &req.evidence.event_log, now)
            .map_err(|e| refuse("policy", e))?;
        gatehouse_attest::verify::expect_report_data(
            &q,
            &report_data(&req.app_id, &wg_key, &nonce),
        )
        .map_err(|e| refuse("binding", e))?;
        let measurements = gatehouse::app_admission::Measurements::of(&req.evidence, &q);
        if let Some(admission) = self.admission.get() {
            let candidate = gatehouse::app_admission::Candidate {
                app_id: req.app_id.clone(),
                purpose: "vpc-register",
                measurements: Some(measurements.clone()),
                domain: None,
            };
            admission
                .admit(&candidate)
                .await
                .map_err(|e| refuse("admission", e))?;
        }
        if !self.consume(&nonce) {
            return Err(refuse("nonce", "already used: ask /v1/challenge again"));
        }
        let (lease, new) = self
            .leases
            .acquire_measured(&req.app_id, &wg_key, Some(measurements), now)
            .await
            .map_err(|e| refuse("pool", e))?;
        let peer = PeerConfig {
            public_key: wg_key,
            allowed_ips: vec![(lease.address, 32)],
            endpoint: None,
            keepalive: 0,
        };
        if let Err(e) = self.wg.set_peer(&peer).await {
            if new {
                let _ = self.leases.release(lease.address).await;
            }
            return Err(refuse("wireguard", e));
        }
        tracing::info!(app = %req.app_id, address = %lease.address, key = %req.wg_public_key, new, "instance registered");
        let gateways = match self.leases.gateways().await {
            Ok(all) => super::gateways::others(&all, self.config.gateway_address),
            Err(e) => {
                tracing::warn!("the other gateway nodes could not be read: {e}");
                Vec::new()
            }
        };
        Ok(self.response(&lease, gateways))
    }

    fn response(&self, lease: &Lease, gateways: Vec<GatewayPeer>) -> RegisterResponse {
        RegisterResponse {
            address: lease.address,
            prefix_len: self.config.prefix.len,
            network: self.config.prefix.network,
            gateway_address: self.config.gateway_address,
            gateway_public_key: base64(&self.key.public),
            endpoint: self.config.endpoint,
            listen_port: self.config.listen_port,
            keepalive: keepalive_for(self.config.handshake_stale),
            gateways,
            coordinator_port: Some(self.config.coordinator_port),
            dns: Some((self.config.dns_port, self.config.domain.clone())),
        }
    }
}
