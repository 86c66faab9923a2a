use crate::HttpConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// `[proxy]`: how the gateway listens and what names it routes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// TLS listeners.
    #[serde(deserialize_with = "crate::de::socket_addrs")]
    pub listen: Vec<SocketAddr>,
    /// Base domains under which `<app-id>[-<port>][s|g].<base>` names route (lower-cased).
    pub base_domains: Vec<String>,
    /// Worker runtimes, each with its own `SO_REUSEPORT` listener; 0 = one per core.
    pub workers: usize,
    /// Expect a PROXY protocol v1/v2 header from a load balancer in front, on every connection.
    pub proxy_protocol_inbound: bool,
    /// The load balancers whose PROXY headers are believed (ranges or addresses). Required
    /// with `proxy_protocol_inbound`: a connection from any other source is refused, so no
    /// client can claim another client's address.
    #[serde(deserialize_with = "crate::de::ip_nets")]
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,
    /// Connection caps: global, per source address, per source within one app.
    pub limits: ConnectionLimits,
    /// Timeouts of the data path.
    pub timeouts: Timeouts,
    /// Custom domains mapped to apps by DNS TXT records.
    pub custom_domains: CustomDomainsConfig,
    /// The L7 mode (`mode = "http"` apps): limits, forwarding headers, port-80 redirect.
    pub http: HttpConfig,
    /// Allow loopback (127.0.0.0/8, ::1) and link-local (169.254.0.0/16, fe80::/10) instance
    /// addresses. Off by default: with them, a name such as `app-8001.<base>` could reach a
    /// service on the gateway host itself (the admin listener). The gateway's own listeners
    /// are never reachable as instances, with or without it.
    pub allow_local_instances: bool,
    /// Move passthrough bytes with `splice(2)`, socket to pipe to socket, so they never enter
    /// the gateway's memory (on by default). Off: read and written through a buffer.
    pub splice: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            base_domains: Vec::new(),
            workers: 0,
            proxy_protocol_inbound: false,
            proxy_protocol_trusted: Vec::new(),
            limits: ConnectionLimits::default(),
            timeouts: Timeouts::default(),
            custom_domains: CustomDomainsConfig::default(),
            http: HttpConfig::default(),
            allow_local_instances: false,
            splice: true,
        }
    }
}

/// `[proxy.timeouts]`, as humantime strings ("5s", "10m").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From accept until the ClientHello (and PROXY header) is read, and for the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    /// One TCP connect to an instance.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// No byte in either direction for this long closes a relayed connection.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// A write that makes no progress for this long closes the connection (slow readers).
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// On SIGTERM/SIGINT, how long live connections may drain before they are closed.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Once one side of a relay has closed, the other side is closed after this long without
    /// a byte (instead of `idle`): a client that leaves does not leave its relay behind.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// A client that sends no byte after its handshake within this long is closed, and a
    /// connection holds a slot of a capped app only once it has sent one.
    #[serde(with = "humantime_serde")]
    pub first_data: Duration,
}

/// `[proxy.limits]`: what one client, or all of them, may hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Connections open at once over all listeners; 0 = as many as the descriptor limit
    /// allows after `descriptor_reserve` (two descriptors per relayed connection).
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 source counts by its /64).
    pub max_connections_per_source: usize,
    /// Sources exempt from `max_connections_per_source` (the load balancers in front).
    #[serde(deserialize_with = "crate::de::ip_nets")]
    pub unlimited_sources: Vec<ipnet::IpNet>,
    /// Descriptors kept free for refusals, the admin listener, the store, DNS and the pipes
    /// passthrough splices through (at most 128 descriptors).
    pub descriptor_reserve: usize,
    /// The share of a capped app's `max_connections` one client address may hold (0-1].
    pub app_share_per_source: f64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 0,
            max_connections_per_source: 512,
            unlimited_sources: Vec::new(),
            descriptor_reserve: 384,
            app_share_per_source: 0.5,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(5),
            connect: Duration::from_secs(3),
            idle: Duration::from_secs(600),
            write: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            linger: Duration::from_secs(10),
            first_data: Duration::from_secs(10),
        }
    }
}

/// `[proxy.custom_domains]`: names outside the base domains, mapped to an app by a TXT record
/// `<txt_prefix>.<domain>` holding `<app-id>:<port>[;mode=passthrough]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomDomainsConfig {
    /// Look up names outside the base domains at all.
    pub enabled: bool,
    /// The TXT record's first label; `_dstack-app-address` gives dstack compatibility.
    pub txt_prefix: String,
    /// DNS servers to ask (`IP:PORT`); empty = the system's `/etc/resolv.conf`. Plain DNS:
    /// in a CVM the host answers it and can move a custom domain to another app; prefer
    /// `dns_over_tls`.
    #[serde(deserialize_with = "crate::de::socket_addrs")]
    pub nameservers: Vec<SocketAddr>,
    /// DNS-over-TLS resolvers, `IP:PORT#tls-name` (e.g. `1.1.1.1:853#cloudflare-dns.com`):
    /// the answer is authenticated by the resolver's certificate, so the host cannot forge it.
    /// When set, `nameservers` and the system's resolvers are not used.
    pub dns_over_tls: Vec<String>,
    /// A PEM CA for the `dns_over_tls` resolvers' certificates (default: the platform's roots).
    pub dns_tls_ca_file: Option<std::path::PathBuf>,
    /// A positive answer is cached for its TTL, but at least this long...
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// ...and at most this long.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// "No such record" (or an unusable one) is cached this long.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// One lookup gives up after this long (the connection is refused).
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// A failed lookup (timeout, SERVFAIL) is cached this long, so a black-holed zone costs
    /// one lookup per name per period, not one per connection.
    #[serde(with = "humantime_serde")]
    pub failure_ttl: Duration,
    /// Names kept in the cache (bounded memory under random-SNI floods).
    pub cache_capacity: u64,
    /// Lookups in flight across all names; beyond it new names are refused until one ends.
    pub max_concurrent_lookups: usize,
    /// Lookups in flight under one zone (the domain's last two labels): random names under
    /// one slow zone cannot take every lookup slot from the others.
    pub max_lookups_per_zone: usize,
}

impl Default for CustomDomainsConfig {
    fn default() -> Self {
        CustomDomainsConfig {
            enabled: true,
            txt_prefix: "_gatehouse-app-address".into(),
            nameservers: Vec::new(),
            dns_over_tls: Vec::new(),
            dns_tls_ca_file: None,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
            lookup_timeout: Duration::from_secs(2),
            failure_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            max_concurrent_lookups: 256,
            max_lookups_per_zone: 32,
        }
    }
}

/// Parses a `dns_over_tls` entry `IP:PORT#tls-name`.
pub fn parse_dot_server(s: &str) -> Result<(SocketAddr, String), String> {
    let (addr, name) = s
        .split_once('#')
        .ok_or_else(|| format!("{s:?}: expected IP:PORT#tls-name"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{s:?}: {addr:?} is not IP:PORT ({e})"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?}: the TLS name after '#' is missing or has spaces"
        ));
    }
    Ok((addr, name.to_owned()))
}

impl ProxyConfig {
    /// Lower-cases names so the hot path compares bytes, never cases.
    pub(crate) fn normalize(&mut self) {
        for d in &mut self.base_domains {
            *d = d.to_ascii_lowercase();
        }
    }
}
