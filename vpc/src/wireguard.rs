//! WireGuard control behind [`WireGuard`]: configure the interface, add or remove a peer with
//! its allowed IP, read each peer's last handshake and transfer counters.
//!
//! - [`Uapi`]: a userspace daemon (wireguard-go, boringtun) through its UAPI socket
//!   (`/var/run/wireguard/<ifname>.sock`, the cross-platform text protocol: `set=1`/`get=1`,
//!   keys in hex, answer ending in `errno=N` and a blank line).
//! - [`WgTool`]: the kernel module (netlink) through the `wg` tool, which speaks to userspace
//!   daemons too.
//!
//! Keys are X25519, generated in-process ([`KeyPair`]); the caller seals the private key.

use super::VpcError;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A WireGuard key pair.
#[derive(Clone)]
pub struct KeyPair {
    private: [u8; 32],
    /// The public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(public {})", base64(&self.public))
    }
}

impl KeyPair {
    /// A fresh key pair.
    pub fn generate() -> Result<KeyPair, VpcError> {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
        let key =
            PrivateKey::generate(&X25519).map_err(|_| VpcError::Key("X25519 generation".into()))?;
        let seed: Curve25519SeedBin<'_> = key
            .as_be_bytes()
            .map_err(|_| VpcError::Key("X25519 export".into()))?;
        let private: [u8; 32] = seed
            .as_ref()
            .try_into()
            .map_err(|_| VpcError::Key("X25519 key is not 32 bytes".into()))?;
        KeyPair::from_private(&private)
    }

    /// The pair of a stored private key.
    pub fn from_private(private: &[u8]) -> Result<KeyPair, VpcError> {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        let key = PrivateKey::from_private_key(&X25519, private)
            .map_err(|_| VpcError::Key("not an X25519 private key".into()))?;
        let public: [u8; 32] = key
            .compute_public_key()
            .map_err(|_| VpcError::Key("X25519 public key".into()))?
            .as_ref()
            .try_into()
            .map_err(|_| VpcError::Key("X25519 public key is not 32 bytes".into()))?;
        Ok(KeyPair {
            private: private
                .try_into()
                .map_err(|_| VpcError::Key("private key is not 32 bytes".into()))?,
            public,
        })
    }

    /// The private key (to seal it; never log it).
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

/// Standard base64 (how `wg` and users write keys).
pub fn base64(key: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Decodes a base64 WireGuard key.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?
        .try_into()
        .ok()
}

/// A peer to set: its key, the one address it may use, where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// The addresses it may send from (a `/32` for an instance; the VPC prefix for the gateway
    /// as seen from an instance).
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
    /// Where to send to (unset: learned from the peer's packets).
    pub endpoint: Option<SocketAddr>,
    /// Keepalive interval in seconds (0: off).
    pub keepalive: u16,
}

/// What the interface reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// A WireGuard interface.
#[async_trait::async_trait]
pub trait WireGuard: Send + Sync + std::fmt::Debug {
    /// The interface name.
    fn interface(&self) -> &str;
    /// Sets the private key and listen port (peers are kept).
    async fn configure(&self, key: &KeyPair, listen_port: Option<u16>) -> Result<(), VpcError>;
    /// Adds or updates a peer (its allowed IPs replaced).
    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), VpcError>;
    /// Removes a peer.
    async fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), VpcError>;
    /// The interface's public key (`None`: not configured, e.g. a restarted daemon) and peers.
    async fn state(&self) -> Result<(Option<[u8; 32]>, Vec<PeerStats>), VpcError>;
}

/// A userspace daemon through its UAPI socket.
#[derive(Debug, Clone)]
pub struct Uapi {
    interface: String,
    socket: PathBuf,
}

/// Where userspace daemons put their sockets (shared by all network namespaces).
pub const UAPI_DIR: &str = "/var/run/wireguard";
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

impl Uapi {
    /// The daemon serving `interface`, at `/var/run/wireguard/<interface>.sock`.
    pub fn new(interface: &str) -> Uapi {
        Uapi {
            interface: interface.to_owned(),
            socket: PathBuf::from(UAPI_DIR).join(format!("{interface}.sock")),
        }
    }

    fn err(&self, reason: impl Into<String>) -> VpcError {
        VpcError::WireGuard {
            interface: self.interface.clone(),
            reason: reason.into(),
        }
    }

    /// One request; the answer's lines before `errno`, or the errno as an error.
    async fn exchange(&self, request: &str) -> Result<Vec<String>, VpcError> {
        let exchange = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| {
                    self.err(format!(
                        "{}: {e} (is the daemon running?)",
                        self.socket.display()
                    ))
                })?;
            s.write_all(request.as_bytes())
                .await
                .map_err(|e| self.err(e.to_string()))?;
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| self.err(e.to_string()))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.ends_with(b"\n\n") {
                    break;
                }
            }
            Ok::<_, VpcError>(buf)
        };
        let buf = tokio::time::timeout(UAPI_TIMEOUT, exchange)
            .await
            .map_err(|_| self.err(format!("no answer within {UAPI_TIMEOUT:?}")))??;
        let text = String::from_utf8_lossy(&buf);
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            match line.strip_prefix("errno=") {
                Some("0") => return Ok(lines),
                Some(n) => return Err(self.err(format!("the daemon answered errno={n}"))),
                None => lines.push(line.to_owned()),
            }
        }
        Err(self.err("the answer has no errno line"))
    }
}

fn hex(key: &[u8]) -> String {
    gatehouse_attest::hex::encode(key)
}

#[async_trait::async_trait]
impl WireGuard for Uapi {
    fn interface(&self) -> &str {
        &self.interface
    }

    async fn configure(&self, key: &KeyPair, listen_port: Option<u16>) -> Result<(), VpcError> {
        let mut req = format!("set=1\nprivate_key={}\n", hex(key.private()));
        if let Some(p) = listen_port {
            req.push_str(&format!("listen_port={p}\n"));
        }
        req.push('\n');
        self.exchange(&req).await.map(|_| ())
    }

    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), VpcError> {
        let mut req = format!(
            "set=1\npublic_key={}\nreplace_allowed_ips=true\npersistent_keepalive_interval={}\n",
            hex(&peer.public_key),
            peer.keepalive
        );
        if let Some(e) = peer.endpoint {
            req.push_str(&format!("endpoint={e}\n"));
        }
        for (ip, len) in &peer.allowed_ips {
            req.push_str(&format!("allowed_ip={ip}/{len}\n"));
        }
        req.push('\n');
        self.exchange(&req).await.map(|_| ())
    }

    async fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), VpcError> {
        let req = format!("set=1\npublic_key={}\nremove=true\n\n", hex(public_key));
        self.exchange(&req).await.map(|_| ())
    }

    async fn state(&self) -> Result<(Option<[u8; 32]>, Vec<PeerStats>), VpcError> {
        let lines = self.exchange("get=1\n\n").await?;
        let mut own = None;
        let mut peers: Vec<PeerStats> = Vec::new();
        let mut secs = 0u64;
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let key = || -> Option<[u8; 32]> { gatehouse_attest::hex::decode_array(v) };
            match (k, peers.last_mut()) {
                ("private_key", _) => {
                    own = key()
                        .and_then(|k| KeyPair::from_private(&k).ok())
                        .map(|p| p.public)
                }
                ("public_key", _) => {
                    let public_key = key().ok_or_else(|| self.err("bad public_key in get"))?;
                    peers.push(PeerStats {
                        public_key,
                        endpoint: None,
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    });
                }
                ("endpoint", Some(p)) => p.endpoint = v.parse().ok(),
                ("last_handshake_time_sec", Some(_)) => secs = v.parse().unwrap_or(0),
                ("last_handshake_time_nsec", Some(p)) => {
                    let nanos: u32 = v.parse().unwrap_or(0);
                    if secs > 0 {
                        p.last_handshake =
                            Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
                    }
                    secs = 0;
                }
                ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().unwrap_or(0),
                ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok((own, peers))
    }
}

/// The kernel module (or any interface) through the `wg` tool.
#[derive(Debug, Clone)]
pub struct WgTool {
    interface: String,
}

impl WgTool {
    /// `wg` on `interface`.
    pub fn new(interface: &str) -> WgTool {
        WgTool {
            interface: interface.to_owned(),
        }
    }

    async fn wg(&self, args: &[String], stdin: Option<String>) -> Result<String, VpcError> {
        let err = |reason: String| VpcError::WireGuard {
            interface: self.interface.clone(),
            reason,
        };
        let mut cmd = tokio::process::Command::new("wg");
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| err(format!("wg: {e}")))?;
        if let (Some(mut input), Some(text)) = (child.stdin.take(), stdin) {
            input
                .write_all(text.as_bytes())
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        let out = tokio::time::timeout(UAPI_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| err("wg did not finish".into()))?
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!(
                "wg {}: {}",
                args.first().map(String::as_str).unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[async_trait::async_trait]
impl WireGuard for WgTool {
    fn interface(&self) -> &str {
        &self.interface
    }

    async fn configure(&self, key: &KeyPair, listen_port: Option<u16>) -> Result<(), VpcError> {
        let mut args = vec![
            "set".into(),
            self.interface.clone(),
            "private-key".into(),
            "/dev/stdin".into(),
        ];
        if let Some(p) = listen_port {
            args.extend(["listen-port".into(), p.to_string()]);
        }
        self.wg(&args, Some(base64(key.private())))
            .await
            .map(|_| ())
    }

    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), VpcError> {
        let ips: Vec<String> = peer
            .allowed_ips
            .iter()
            .map(|(ip, l)| format!("{ip}/{l}"))
            .collect();
        let mut args = vec![
            "set".into(),
            self.interface.clone(),
            "peer".into(),
            base64(&peer.public_key),
            "allowed-ips".into(),
            ips.join(","),
            "persistent-keepalive".into(),
            peer.keepalive.to_string(),
        ];
        if let Some(e) = peer.endpoint {
            args.extend(["endpoint".into(), e.to_string()]);
        }
        self.wg(&args, None).await.map(|_| ())
    }

    async fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), VpcError> {
        let args = vec![
            "set".into(),
            self.interface.clone(),
            "peer".into(),
            base64(public_key),
            "remove".into(),
        ];
        self.wg(&args, None).await.map(|_| ())
    }

    async fn state(&self) -> Result<(Option<[u8; 32]>, Vec<PeerStats>), VpcError> {
        let dump = self
            .wg(
                &["show".into(), self.interface.clone(), "dump".into()],
                None,
            )
            .await?;
        let mut lines = dump.lines();
        // Interface line: private-key, public-key, listen-port, fwmark ("(none)" when unset).
        let own = lines
            .next()
            .and_then(|l| l.split('\t').nth(1))
            .and_then(parse_key);
        let peers = lines
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let secs: u64 = f.get(4)?.parse().ok()?;
                Some(PeerStats {
                    public_key: parse_key(f.first()?)?,
                    endpoint: f.get(2).and_then(|e| e.parse().ok()),
                    last_handshake: (secs > 0)
                        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
                    rx_bytes: f.get(5)?.parse().ok()?,
                    tx_bytes: f.get(6)?.parse().ok()?,
                })
            })
            .collect();
        Ok((own, peers))
    }
}

/// Gives `interface` the address `ip/len` (replacing what it had) and brings it up (`ip`).
pub async fn set_address(interface: &str, ip: Ipv4Addr, len: u8) -> Result<(), VpcError> {
    let err = |reason: String| VpcError::WireGuard {
        interface: interface.to_owned(),
        reason,
    };
    for args in [
        vec![
            "addr".to_owned(),
            "replace".into(),
            format!("{ip}/{len}"),
            "dev".into(),
            interface.into(),
        ],
        vec!["link".into(), "set".into(), interface.into(), "up".into()],
    ] {
        let out = tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .map_err(|e| err(format!("ip: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = KeyPair::generate().unwrap();
        let again = KeyPair::from_private(k.private()).unwrap();
        assert_eq!(again.public, k.public);
        assert_eq!(parse_key(&base64(&k.public)), Some(k.public));
        assert_ne!(KeyPair::generate().unwrap().public, k.public);
        assert!(
            !format!("{k:?}").contains(&base64(k.private())),
            "Debug never shows the private key"
        );
    }

    /// RFC 7748 §6.1 test vector: Alice's private key gives her public key.
    #[test]
    fn x25519_public_key_matches_rfc7748() {
        let private = gatehouse_attest::hex::decode(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap();
        let k = KeyPair::from_private(&private).unwrap();
        assert_eq!(
            gatehouse_attest::hex::encode(&k.public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
