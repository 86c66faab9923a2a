//! `[proxy.http]` (the L7 mode's limits, headers and plain-HTTP listener) and an app's
//! `[apps.health_check]`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// `[proxy.http]`: applies to every `mode = "http"` app.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Client-supplied `X-Forwarded-*` and `Forwarded`: `replace` them (default: only this hop
    /// is trusted) or `append` to them (a trusted load balancer in front sets them).
    pub forwarded: ForwardedMode,
    /// A request header block larger than this (bytes, request line included) gets `431`.
    pub max_header_bytes: usize,
    /// A request with more header fields than this gets `431`.
    pub max_headers: usize,
    /// A request body larger than this (bytes) gets `413`; 0 = no limit.
    pub max_request_body: u64,
    /// From a connection's start, or the end of its previous response, until a whole request
    /// header has arrived (HTTP/1.1; slow clients are closed). Also the keep-alive idle limit.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// No byte from the instance for this long while a response is awaited gets `504`.
    #[serde(with = "humantime_serde")]
    pub upstream_read_timeout: Duration,
    /// Idle upstream connections kept in the pool, across all instances.
    pub upstream_pool_size: usize,
    /// An idle pooled upstream connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub upstream_idle_timeout: Duration,
    /// A plain-HTTP listener (usually `0.0.0.0:80`) that redirects every request to HTTPS
    /// with `308`; absent = none.
    #[serde(default, deserialize_with = "crate::de::opt_socket_addr")]
    pub redirect_listen: Option<SocketAddr>,
    /// One structured log line per request (target `gatehouse::access`), off by default.
    pub access_log: bool,
    /// Pass request header names containing `_` to instances. Off by default: CGI, WSGI and
    /// Rack read `X_Forwarded_For` as `X-Forwarded-For`, so such a header from a client would
    /// pose as one the gateway sets.
    pub keep_underscore_headers: bool,
    /// HTTP/1.1 responses slower than this many bytes per second to a client end (0 = off;
    /// `proxy.timeouts.write` bounds a stalled write on both versions regardless).
    pub min_send_rate: usize,
    /// `[proxy.http.channel]`: the encrypted channel into the TEE, for apps that set
    /// `encrypted_channel = true`.
    pub channel: ChannelConfig,
}

/// `[proxy.http.channel]`: the end-to-end encrypted channel (Oblivious HTTP to a key made in
/// the TEE and published in the attestation claims).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// A channel key is current this long, then a new one is made.
    #[serde(with = "humantime_serde")]
    pub rotate: Duration,
    /// The previous key still opens requests this long after its successor was made.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// An inner request dated further than this from the gateway's clock is refused; inside
    /// it, a request seen before is refused as a replay.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    /// The largest encapsulated request body (bytes); the inner body is held to
    /// `max_request_body` as any other.
    pub max_request: u64,
    /// The largest response (bytes of body) sealed back; a larger one gets `502`.
    pub max_response: u64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            rotate: Duration::from_secs(7 * 24 * 3600),
            grace: Duration::from_secs(24 * 3600),
            replay_window: Duration::from_secs(120),
            max_request: 1 << 20,
            max_response: 16 << 20,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            forwarded: ForwardedMode::Replace,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body: 0,
            header_read_timeout: Duration::from_secs(30),
            upstream_read_timeout: Duration::from_secs(60),
            upstream_pool_size: 1024,
            upstream_idle_timeout: Duration::from_secs(60),
            redirect_listen: None,
            access_log: false,
            keep_underscore_headers: false,
            min_send_rate: 0,
            channel: ChannelConfig::default(),
        }
    }
}

/// What happens to forwarding headers a client sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedMode {
    /// Drop them and set ours.
    #[default]
    Replace,
    /// Keep them and add this hop.
    Append,
}

/// `[apps.health_check]`: active checks, `GET <path>` on each instance every `interval`.
/// An instance leaves rotation after `fall` failed checks in a row and returns after `rise`
/// good ones; a good check is a 2xx or 3xx answer within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Request path, starting with `/`.
    pub path: String,
    /// Instance port to check; absent = the app's `default_port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Time between two checks of one instance.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// One check's limit (connect and answer).
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed checks in a row that take an instance out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Good checks in a row that bring it back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// `http1`, or `h2c` (HTTP/2 with prior knowledge) for instances that speak only h2,
    /// as gRPC servers often do.
    #[serde(default)]
    pub protocol: HealthProtocol,
}

/// How a health check talks to an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 over plaintext, with prior knowledge.
    H2c,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}
