//! `[acme]` and `[dns]`: certificate issuance, and the DNS provider that writes challenge
//! and CAA records.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[acme]`: certificates from an ACME CA for the base domains (apex + wildcard, DNS-01) and
/// for custom domains (TLS-ALPN-01 on the TLS listener).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The directory URL.
    pub directory: String,
    /// Contact URIs for the account (`mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// A PEM CA that signed the ACME server's own TLS certificate (a test CA such as Pebble);
    /// default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// External account binding: the key id given by the CA.
    #[serde(default)]
    pub eab_kid: Option<String>,
    /// External account binding: a file holding the HMAC key, base64url as CAs hand it out.
    #[serde(default)]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// Certificate key type: `ecdsa-p256` (default) or `ecdsa-p384`.
    #[serde(default)]
    pub key_type: KeyType,
    /// Issue `<base>` + `*.<base>` for each `proxy.base_domains` by DNS-01 (needs `[dns]`).
    #[serde(default = "yes")]
    pub base_domains: bool,
    /// Custom domains to issue by TLS-ALPN-01 (the CA connects to the TLS listener on 443).
    #[serde(default)]
    pub domains: Vec<String>,
    /// The CA's CAA issuer domain (`letsencrypt.org`).
    #[serde(default = "default_issuer")]
    pub caa_issuer: String,
    /// Check CAA before each order (refusing on `Unknown`/`Blocked`) and every
    /// `caa_check_interval` while running.
    #[serde(default = "yes")]
    pub caa_check: bool,
    /// Resolvers (`IP:PORT`) for CAA checks; default: `[dns] resolvers`, else the system's.
    #[serde(default, deserialize_with = "crate::de::socket_addrs")]
    pub caa_resolvers: Vec<SocketAddr>,
    /// How often the running gateway re-checks CAA and counts drift.
    #[serde(default = "default_caa_interval", with = "humantime_serde")]
    pub caa_check_interval: Duration,
    /// Write CAA records locking the base domains to our account through `[dns]`.
    #[serde(default)]
    pub set_caa: bool,
    /// An ACME profile to request (`tlsserver`, `shortlived`), when the CA offers profiles.
    #[serde(default)]
    pub profile: Option<String>,
    /// Certificates ordered at the first handshake for a custom domain (`[acme.on_demand]`).
    #[serde(default)]
    pub on_demand: OnDemandConfig,
}

/// `[acme.on_demand]`: a custom domain whose TXT record names an app here gets its
/// certificate when a client first asks for it (as Caddy's on-demand TLS), if `[admission]`
/// admits it and within the rate limits. The handshake that asked is refused; the next ones,
/// a second or two later, get the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandConfig {
    /// Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Orders per hour at most, over all apps.
    #[serde(default = "default_per_hour")]
    pub max_per_hour: u32,
    /// Orders per hour at most for one app's domains.
    #[serde(default = "default_per_app")]
    pub max_per_app_per_hour: u32,
}

impl Default for OnDemandConfig {
    fn default() -> Self {
        OnDemandConfig {
            enabled: false,
            max_per_hour: default_per_hour(),
            max_per_app_per_hour: default_per_app(),
        }
    }
}

fn default_per_hour() -> u32 {
    20
}
fn default_per_app() -> u32 {
    5
}

/// Certificate key algorithm; the key is generated in-process and sealed at rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

fn yes() -> bool {
    true
}
fn default_issuer() -> String {
    "letsencrypt.org".into()
}
fn default_caa_interval() -> Duration {
    Duration::from_secs(3600)
}

/// `[dns]`: the provider that writes `_acme-challenge` TXT and CAA records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `rfc2136` or `cloudflare`.
    pub provider: DnsProviderKind,
    /// Resolvers (`IP:PORT`) for CAA checks and for finding a zone's authoritative servers;
    /// empty = the system's.
    #[serde(default, deserialize_with = "crate::de::socket_addrs")]
    pub resolvers: Vec<SocketAddr>,
    /// Servers to poll until a challenge record is visible; empty = the zone's NS.
    #[serde(default, deserialize_with = "crate::de::socket_addrs")]
    pub authoritative: Vec<SocketAddr>,
    /// Longest wait for a record to reach every authoritative server.
    #[serde(default = "default_propagation", with = "humantime_serde")]
    pub propagation_timeout: Duration,
    /// `[dns.rfc2136]`.
    #[serde(default)]
    pub rfc2136: Option<Rfc2136Config>,
    /// `[dns.cloudflare]`.
    #[serde(default)]
    pub cloudflare: Option<CloudflareConfig>,
}

fn default_propagation() -> Duration {
    Duration::from_secs(120)
}

/// Which DNS provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    /// RFC 2136 dynamic updates with TSIG.
    Rfc2136,
    /// The Cloudflare v4 API.
    Cloudflare,
}

/// `[dns.rfc2136]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The zone primary (`IP:PORT`).
    #[serde(deserialize_with = "crate::de::socket_addr")]
    pub server: SocketAddr,
    /// The zones we may update (names are matched to the longest).
    pub zones: Vec<String>,
    /// The TSIG key's name.
    pub key_name: String,
    /// `hmac-sha256` (default), `hmac-sha384`, `hmac-sha512`.
    #[serde(default = "default_tsig_algorithm")]
    pub key_algorithm: String,
    /// A file holding the base64 secret.
    pub key_file: PathBuf,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".into()
}

/// `[dns.cloudflare]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareConfig {
    /// A file holding an API token with Zone:Read and DNS:Edit.
    pub api_token_file: PathBuf,
    /// The API base (tests point it at a local server).
    #[serde(default = "default_cloudflare_api")]
    pub api: String,
}

fn default_cloudflare_api() -> String {
    "https://api.cloudflare.com/client/v4".into()
}

impl AcmeConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_file, &mut self.eab_hmac_key_file]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
    }
}

impl DnsConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(r) = &mut self.rfc2136 {
            r.key_file = base.join(&r.key_file);
        }
        if let Some(c) = &mut self.cloudflare {
            c.api_token_file = base.join(&c.api_token_file);
        }
    }
}
