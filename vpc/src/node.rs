//! The gateway's side of the VPC at run time: its WireGuard interface (key sealed in the
//! store), the RA-TLS registration listener, and the liveness loop that feeds the route
//! table and reclaims abandoned leases.
//!
//! Liveness: an instance is in rotation while its peer showed life within `handshake_stale`:
//! a completed handshake, or received bytes (the agent's persistent keepalive, a third of the
//! threshold, moves the counter even when no request flows). WireGuard re-handshakes only
//! every two minutes, so the counter is what makes a short threshold usable.

use super::coordinator::Coordinator;
use super::leases::{Lease, Leases};
use super::register::{RegisterRequest, Registrar};
use super::wireguard::{parse_key, set_address, KeyPair, PeerConfig, Uapi, WgTool, WireGuard};
use super::VpcError;
use gatehouse::attestation::Attestor;
use gatehouse::http_server::{json, read_json, serve_tls, text, Limits};
use gatehouse::route::SourceInstances;
use gatehouse_attest::policy::Policy;
use gatehouse_attest::provider::TeeKind;
use gatehouse_attest::ratls_cert::RotatingCert;
use gatehouse_config::{VpcConfig, WireGuardKind};
use gatehouse_store::{Sealer, Store};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The route source name of VPC instances.
const SOURCE: &str = "vpc";
/// The largest registration body (a quote is ~5 KB; event logs add a few KB).
const REGISTER_BODY_LIMIT: usize = 256 * 1024;

/// The WireGuard control `kind` names.
pub fn wireguard_for(kind: WireGuardKind, interface: &str) -> Arc<dyn WireGuard> {
    match kind {
        WireGuardKind::Userspace => Arc::new(Uapi::new(interface)),
        WireGuardKind::Kernel => Arc::new(WgTool::new(interface)),
    }
}

/// The running VPC of a gateway.
pub struct VpcNode {
    registrar: Arc<Registrar>,
    /// The mesh's coordinator (netmaps, whois, names) on the VPC address.
    coordinator: Arc<Coordinator>,
    wg: Arc<dyn WireGuard>,
    key: KeyPair,
    /// The registration listener's RA-TLS certificate (rotated daily) and its TLS.
    cert: Arc<RotatingCert>,
    tls: tokio_rustls::TlsAcceptor,
}

/// What the VPC holds now, for the admin API and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    /// The interface.
    pub interface: String,
    /// Every lease in the store (all nodes').
    pub leases: Vec<super::leases::Lease>,
    /// The peers of this node's interface.
    pub peers: Vec<PeerView>,
}

/// One WireGuard peer as the interface reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    /// Its public key (base64).
    pub public_key: String,
    /// Its current endpoint.
    pub endpoint: Option<String>,
    /// The last completed handshake (unix seconds), if any.
    pub last_handshake: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

impl VpcNode {
    /// Asks `admission` before each registration (after the quote, policy and binding
    /// passed). Set once, before the registration listener serves.
    pub fn set_admission(&self, admission: Arc<dyn gatehouse::app_admission::AdmitApps>) {
        let _ = self.registrar.admission.set(admission);
    }

    /// Who may reach whom from now on (a reload changed `[vpc.apps.*] reach`).
    pub fn set_reach(&self, reach: super::mesh::Reach) {
        self.coordinator.set_reach(reach);
    }

    /// Who may reach whom now.
    pub fn reach(&self) -> super::mesh::Reach {
        self.coordinator.current_reach()
    }

    /// The leases and the interface's peers (an unreadable part is left empty and logged).
    pub async fn overview(&self) -> Overview {
        let leases = self.registrar.leases.all().await.unwrap_or_else(|e| {
            tracing::warn!("vpc overview: leases: {e}");
            Vec::new()
        });
        let peers = match self.wg.state().await {
            Ok((_, peers)) => peers
                .into_iter()
                .map(|p| PeerView {
                    public_key: super::wireguard::base64(&p.public_key),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    last_handshake: p.last_handshake.and_then(|t| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
            Err(e) => {
                tracing::warn!("vpc overview: peers: {e}");
                Vec::new()
            }
        };
        Overview {
            interface: self.wg.interface().to_owned(),
            leases,
            peers,
        }
    }
}

impl std::fmt::Debug for VpcNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VpcNode({})", self.wg.interface())
    }
}

/// Loads `[vpc.apps.<id>] policy` files. A policy that pins no measurement would admit any
/// CVM on any software as that app, and one trusting the simulator's public root on a real
/// TEE would admit forged quotes: both are config errors (`check-config` reports them too).
pub fn app_policies(
    config: &VpcConfig,
    gateway_simulated: bool,
) -> Result<HashMap<String, Policy>, String> {
    let mut policies = HashMap::new();
    for (id, app) in &config.apps {
        let key = format!("vpc.apps.{id}.policy");
        let policy = Policy::load(&app.policy).map_err(|e| format!("{key}: {e}"))?;
        if !policy.pins_measurements() {
            return Err(format!(
                "{key}: {} pins no measurement (mrtd, rtmr0-3 or [events]): any CVM could \
                 register as {id:?}; pin them (gatehouse policy-from-bundle)",
                app.policy.display()
            ));
        }
        if policy.insecure_trust_simulator_root && !gateway_simulated {
            return Err(format!(
                "{key}: insecure_trust_simulator_root on a gateway with a real TEE would admit \
                 forged quotes"
            ));
        }
        policies.insert(id.clone(), policy);
    }
    Ok(policies)
}

impl VpcNode {
    /// Sets up the interface (key, port, address, every leased peer) and the registrar.
    /// Registration needs attestation: without an attestor the VPC does not start (agents
    /// never send their quotes to an unattested gateway, and we never admit unverified ones).
    pub async fn start(
        config: &VpcConfig,
        store: Arc<dyn Store>,
        sealer: Arc<dyn Sealer>,
        attestor: &Attestor,
        node: &str,
    ) -> Result<VpcNode, VpcError> {
        let key = super::gateways::claim(store.as_ref(), sealer.as_ref(), config, node).await?;
        let wg = wireguard_for(config.kind, &config.interface);
        let simulated = attestor.provider().kind() == TeeKind::Simulated;
        let policies = app_policies(config, simulated).map_err(VpcError::Config)?;
        let leases = Leases::new(store, sealer, config.prefix, vec![config.gateway_address]);
        let registrar = Registrar::new(
            config.clone(),
            leases,
            wg.clone(),
            key.clone(),
            policies,
            attestor.collateral_source().clone(),
        );
        let cert = RotatingCert::new(attestor.provider().clone(), "gatehouse-vpc-register")
            .await
            .map_err(|e| VpcError::Config(format!("RA-TLS certificate: {e}")))?;
        let tls = cert
            .server_config(false)
            .map_err(|e| VpcError::Config(format!("registration TLS: {e}")))?;
        let coordinator = Coordinator::new(super::mesh::Reach::from_config(config), &config.domain);
        let node = VpcNode {
            registrar: Arc::new(registrar),
            coordinator,
            wg,
            key,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            cert,
        };
        node.configure().await?;
        node.serve_coordinator().await?;
        Ok(node)
    }

    /// Binds the coordinator's HTTP API and name server on the VPC address (reachable only
    /// through WireGuard) and serves them.
    async fn serve_coordinator(&self) -> Result<(), VpcError> {
        let c = self.registrar.config();
        let ip = IpAddr::V4(c.gateway_address);
        let bind = |what: &str, port: u16, e: std::io::Error| {
            VpcError::Config(format!("vpc.{what} {ip}:{port}: {e}"))
        };
        let http = tokio::net::TcpListener::bind((ip, c.coordinator_port))
            .await
            .map_err(|e| bind("coordinator_port", c.coordinator_port, e))?;
        let udp = tokio::net::UdpSocket::bind((ip, c.dns_port))
            .await
            .map_err(|e| bind("dns_port", c.dns_port, e))?;
        let tcp = tokio::net::TcpListener::bind((ip, c.dns_port))
            .await
            .map_err(|e| bind("dns_port", c.dns_port, e))?;
        tokio::spawn(self.coordinator.clone().serve_http(http));
        tokio::spawn(self.coordinator.clone().serve_dns_udp(udp));
        tokio::spawn(self.coordinator.clone().serve_dns_tcp(tcp));
        tracing::info!(
            coordinator = %SocketAddr::new(ip, c.coordinator_port),
            dns = %SocketAddr::new(ip, c.dns_port),
            domain = %c.domain,
            "VPC mesh coordinator and names on"
        );
        Ok(())
    }

    /// (Re)applies the interface: key, port, address, and a peer per lease (after a gateway
    /// or daemon restart the peers come back from the store).
    async fn configure(&self) -> Result<(), VpcError> {
        let c = self.registrar.config();
        self.wg.configure(&self.key, Some(c.listen_port)).await?;
        set_address(&c.interface, c.gateway_address, c.prefix.len).await?;
        no_forwarding(&c.interface)?;
        let purged = self.registrar.leases.purge_unreadable().await?;
        if purged > 0 {
            tracing::warn!(purged, "VPC lease records that do not open under this node's sealing key were deleted (forged, or from before a key change): their instances register again");
        }
        let leases = self.registrar.leases.all().await?;
        for lease in &leases {
            match parse_key(&lease.public_key) {
                Some(public_key) => {
                    self.wg
                        .set_peer(&PeerConfig {
                            public_key,
                            allowed_ips: vec![(lease.address, 32)],
                            endpoint: None,
                            keepalive: 0,
                        })
                        .await?
                }
                None => {
                    tracing::warn!(address = %lease.address, "lease with a malformed key skipped")
                }
            }
        }
        tracing::info!(
            interface = %c.interface,
            address = %c.gateway_address,
            peers = leases.len(),
            "VPC interface configured"
        );
        Ok(())
    }

    /// Adds every lease registered through any node as a peer as soon as the store says so,
    /// and removes the peer of a lease given back (on a cluster, an instance registered
    /// through another node is reached from this one). Runs until dropped; after a lost
    /// watch it starts again from a fresh snapshot.
    pub async fn follow_leases(self: Arc<Self>) {
        let store = self.registrar.leases.store().clone();
        loop {
            let (listing, mut watch) = match store.watch(super::leases::PREFIX).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("VPC: cannot watch the leases, retrying: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let mut peers: HashMap<String, [u8; 32]> = HashMap::new();
            let mut known: std::collections::BTreeMap<String, Lease> = Default::default();
            for (key, v) in listing {
                self.lease_changed(&mut peers, &mut known, &key, Some(&v.value))
                    .await;
            }
            self.publish_leases(&known);
            while let Some(event) = watch.next().await {
                match event {
                    gatehouse_store::Event::Put { key, value } => {
                        self.lease_changed(&mut peers, &mut known, &key, Some(&value.value))
                            .await
                    }
                    gatehouse_store::Event::Delete { key } => {
                        self.lease_changed(&mut peers, &mut known, &key, None).await
                    }
                }
                self.publish_leases(&known);
            }
        }
    }

    /// Hands the leases to the coordinator; a lease registered within `handshake_stale`
    /// counts as live before its first handshake (it just proved itself), so agents hear of
    /// a new instance at once rather than at the next liveness pass.
    fn publish_leases(&self, known: &std::collections::BTreeMap<String, Lease>) {
        let stale = self.registrar.config().handshake_stale;
        let mut leases: Vec<Lease> = known.values().cloned().collect();
        leases.sort_by_key(|l| u32::from(l.address));
        self.coordinator
            .add_fresh(leases, |l| registered_within(l, stale));
    }

    async fn lease_changed(
        &self,
        peers: &mut HashMap<String, [u8; 32]>,
        known: &mut std::collections::BTreeMap<String, Lease>,
        key: &str,
        value: Option<&[u8]>,
    ) {
        let lease = value.and_then(|v| self.registrar.leases.decode(key, v));
        match &lease {
            Some(l) => known.insert(key.to_owned(), l.clone()),
            None => known.remove(key),
        };
        let public = lease.as_ref().and_then(|l| parse_key(&l.public_key));
        let before = match public {
            Some(k) => peers.insert(key.to_owned(), k),
            None => peers.remove(key),
        };
        if let Some(old) = before.filter(|old| Some(*old) != public) {
            if let Err(e) = self.wg.remove_peer(&old).await {
                tracing::warn!(%key, "VPC: removing the peer of a released lease: {e}");
            }
        }
        if let (Some(lease), Some(public_key)) = (lease, public) {
            let peer = PeerConfig {
                public_key,
                allowed_ips: vec![(lease.address, 32)],
                endpoint: None,
                keepalive: 0,
            };
            if let Err(e) = self.wg.set_peer(&peer).await {
                tracing::warn!(address = %lease.address, "VPC: adding the peer of a lease: {e}");
            }
        }
    }

    /// Serves registration on `listener` until dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, "VPC registration on (RA-TLS)");
        }
        let registrar = self.registrar.clone();
        let serving = serve_tls(
            listener,
            self.tls.clone(),
            Limits::default(),
            move |req, peer| {
                let registrar = registrar.clone();
                async move { handle(&registrar, req, peer).await }
            },
        );
        // The certificate is renewed for as long as the listener serves.
        tokio::select! {
            () = serving => {}
            () = self.cert.clone().rotate() => {}
        }
    }

    /// Every third of `handshake_stale` (0.5-10 s): reads the peers, publishes the live
    /// instances into `routes`, reclaims leases idle for `lease_reclaim`, and re-applies the
    /// interface when its daemon lost the configuration. Runs until dropped.
    pub async fn watch(self: Arc<Self>, shared: Arc<gatehouse::conn::Shared>) {
        let c = self.registrar.config().clone();
        let interval =
            (c.handshake_stale / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
        let mut rx_moved: HashMap<[u8; 32], (u64, Option<Instant>)> = HashMap::new();
        let mut in_rotation = SourceInstances::new();
        loop {
            match self.tick(&c, &mut rx_moved).await {
                Ok(now) => {
                    log_changes(&in_rotation, &now, c.handshake_stale);
                    shared.routes.set_instances(SOURCE, now.clone());
                    in_rotation = now;
                }
                Err(e) => tracing::warn!("VPC liveness: {e}"),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One pass: the instances in rotation. `rx_moved`: per peer, its receive counter and
    /// when it last grew (`None`: not since this process saw it, or never).
    async fn tick(
        &self,
        c: &VpcConfig,
        rx_moved: &mut HashMap<[u8; 32], (u64, Option<Instant>)>,
    ) -> Result<SourceInstances, VpcError> {
        if no_forwarding(&c.interface)? {
            tracing::warn!(interface = %c.interface, "IP forwarding was turned on for the VPC interface (a host sysctl such as net.ipv4.ip_forward=1); turned off again: peers do not reach each other through the gateway");
        }
        let (own, peers) = self.wg.state().await?;
        if own != Some(self.key.public) {
            tracing::warn!(interface = %c.interface, "WireGuard lost its configuration (daemon restarted?); re-applying");
            self.configure().await?;
        }
        let now = Instant::now();
        rx_moved.retain(|k, _| peers.iter().any(|p| p.public_key == *k));
        // Per peer: the latest sign of life (handshake or received bytes) as a wall time.
        let mut last_sign: HashMap<[u8; 32], SystemTime> = HashMap::new();
        for p in &peers {
            let e = rx_moved.entry(p.public_key).or_insert((p.rx_bytes, None));
            if e.0 != p.rx_bytes {
                *e = (p.rx_bytes, Some(now));
            }
            let rx = e.1.map(|at| SystemTime::now() - now.duration_since(at));
            if let Some(t) = rx.max(p.last_handshake) {
                last_sign.insert(p.public_key, t);
            }
        }
        let is_live = |key: &[u8; 32]| {
            last_sign
                .get(key)
                .is_some_and(|t| t.elapsed().unwrap_or_default() < c.handshake_stale)
        };
        let mut by_app = SourceInstances::new();
        let leases = self.registrar.leases.all().await?;
        let endpoints: HashMap<String, SocketAddr> = peers
            .iter()
            .filter_map(|p| Some((super::wireguard::base64(&p.public_key), p.endpoint?)))
            .collect();
        let live: std::collections::HashSet<String> = leases
            .iter()
            .filter(|l| {
                parse_key(&l.public_key).is_some_and(|k| is_live(&k))
                    || registered_within(l, c.handshake_stale)
            })
            .map(|l| l.public_key.clone())
            .collect();
        self.coordinator.update(leases.clone(), live, endpoints);
        for lease in leases {
            let Some(key) = parse_key(&lease.public_key) else {
                continue;
            };
            if is_live(&key) {
                by_app
                    .entry(lease.app_id.clone())
                    .or_default()
                    .push(IpAddr::V4(lease.address));
            } else {
                self.reclaim_if_idle(c, &lease, key, last_sign.get(&key).copied())
                    .await?;
            }
        }
        Ok(by_app)
    }

    /// Gives back a lease whose instance showed no life (and did not register) for
    /// `lease_reclaim`: the lease is deleted by compare-and-swap first (an instance that
    /// registered again meanwhile keeps it), and only then its peer is removed.
    async fn reclaim_if_idle(
        &self,
        c: &VpcConfig,
        lease: &Lease,
        key: [u8; 32],
        last_sign: Option<SystemTime>,
    ) -> Result<(), VpcError> {
        let registered = SystemTime::UNIX_EPOCH + Duration::from_secs(lease.registered_at);
        let latest = last_sign.map_or(registered, |t| t.max(registered));
        if latest.elapsed().unwrap_or_default() < c.lease_reclaim {
            return Ok(());
        }
        if self.registrar.leases.release_if_unchanged(lease).await? {
            self.wg.remove_peer(&key).await?;
            tracing::info!(app = %lease.app_id, address = %lease.address, "lease reclaimed (no sign of life)");
        }
        Ok(())
    }
}

/// Whether `lease` registered less than `within` ago.
fn registered_within(lease: &Lease, within: Duration) -> bool {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(lease.registered_at);
    at.elapsed().unwrap_or_default() < within
}

/// One line per instance entering or leaving rotation.
fn log_changes(before: &SourceInstances, now: &SourceInstances, stale: Duration) {
    let has =
        |m: &SourceInstances, app: &str, ip: &IpAddr| m.get(app).is_some_and(|v| v.contains(ip));
    for (app, ips) in now {
        for ip in ips.iter().filter(|ip| !has(before, app, ip)) {
            tracing::info!(app = %app, address = %ip, "VPC instance in rotation");
        }
    }
    for (app, ips) in before {
        for ip in ips.iter().filter(|ip| !has(now, app, ip)) {
            tracing::warn!(app = %app, address = %ip, "VPC instance out of rotation: no sign of life for {stale:?}");
        }
    }
}

/// Turns IPv4 forwarding off for packets received on `interface` (so one VPC peer never
/// reaches another through the gateway, whatever the host's global `ip_forward` says);
/// returns whether it was on. Writing `net.ipv4.ip_forward` resets every interface's value,
/// so the liveness loop calls this on every pass.
fn no_forwarding(interface: &str) -> Result<bool, VpcError> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
    let err = |e: std::io::Error| VpcError::WireGuard {
        interface: interface.to_owned(),
        reason: format!("{path}: {e}"),
    };
    let now = std::fs::read_to_string(&path).map_err(err)?;
    if now.trim() == "0" {
        return Ok(false);
    }
    std::fs::write(&path, "0").map_err(err)?;
    Ok(true)
}

async fn handle(
    registrar: &Registrar,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/v1/challenge") => match registrar.challenge() {
            Ok(n) => json(
                200,
                &serde_json::json!({ "nonce": gatehouse_attest::hex::encode(&n) }),
            ),
            Err(e) => text(500, format!("500 {e}\n")),
        },
        ("POST", "/v1/register") => {
            let r: RegisterRequest = match read_json(
                req,
                REGISTER_BODY_LIMIT,
                "{\"app_id\", \"wg_public_key\", \"nonce\", \"evidence\"}",
            )
            .await
            {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            match registrar.register(&r, gatehouse_attest::unix_now()).await {
                Ok(resp) => json(200, &resp),
                Err(refusal) => {
                    tracing::warn!(app = %r.app_id, %peer, "{refusal}");
                    json(403, &refusal)
                }
            }
        }
        _ => text(
            404,
            "404 not found (POST /v1/challenge, POST /v1/register)\n",
        ),
    }
}
