//! The life of one connection, top to bottom as in the chart of ARCHITECTURE.md: `handle`
//! runs `route` (steps 1-4), then `passthrough` or `terminate` (steps 5-6).

use crate::error::ConnError;
use crate::hello::{self, alert, replay::Prefixed, ClientHello};
use crate::metrics::Metrics;
use crate::proxy_protocol::{self, ProxyHeaderError};
use crate::relay::{self, RelayLimits};
use crate::route::{AppSlot, Mode, Route, Routes};
use crate::terminate::TlsConfigs;
use crate::upstream;
use gatehouse_certbot::alpn::{AlpnChallenges, ACME_TLS_ALPN};
use gatehouse_config::Timeouts;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::Instrument;

/// What every connection reads: live routes and certificates, limits, counters.
#[derive(Debug)]
pub struct Shared {
    /// Route snapshot and custom-domain resolver.
    pub routes: Routes,
    /// rustls configs and the live certificates.
    pub tls: TlsConfigs,
    /// Timeouts and trust that a reload may change: each connection reads them once, as
    /// they are when it arrives.
    pub tunables: arc_swap::ArcSwap<Tunables>,
    /// Accept-time caps: global and per source (a reload changes the caps in place).
    pub admission: Arc<crate::admission::Admission>,
    /// Counters.
    pub metrics: Metrics,
    /// Pending ACME TLS-ALPN-01 challenges, answered before any routing.
    pub acme: AcmeTls,
    /// The attestation bundle's source (absent with `[tee] provider = "none"`).
    pub attest: std::sync::OnceLock<Arc<crate::attestation::Attestor>>,
    /// The L7 proxy of `mode = "http"` apps.
    pub http: crate::http::HttpEngine,
    /// The encrypted channel's keys (with attestation and a store).
    pub channel: std::sync::OnceLock<Arc<crate::channel::Channel>>,
    /// Certificates on demand (`[acme.on_demand]`), asked when a name has none.
    pub on_demand: std::sync::OnceLock<Arc<dyn crate::app_admission::OnDemandCerts>>,
}

/// What a connection reads once when it arrives, and a reload replaces for later ones.
#[derive(Debug, Clone)]
pub struct Tunables {
    /// Data-path timeouts.
    pub timeouts: Timeouts,
    /// Whether every connection starts with a PROXY header.
    pub proxy_protocol_inbound: bool,
    /// The sources whose PROXY headers are believed (others are refused).
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,
    /// The share of a capped app's slots one client address may hold.
    pub app_share_per_source: f64,
    /// Passthrough splices (`[proxy] splice`).
    pub splice: bool,
}

impl Tunables {
    /// The tunables of `proxy`.
    pub fn of(proxy: &gatehouse_config::ProxyConfig) -> Tunables {
        Tunables {
            timeouts: proxy.timeouts,
            proxy_protocol_inbound: proxy.proxy_protocol_inbound,
            proxy_protocol_trusted: proxy.proxy_protocol_trusted.clone(),
            app_share_per_source: proxy.limits.app_share_per_source,
            splice: proxy.splice,
        }
    }
}

/// The TLS-ALPN-01 responder: the pending challenges and the rustls config over them.
#[derive(Debug)]
pub struct AcmeTls {
    /// Challenge certificates by name (the ACME manager inserts and removes them).
    pub challenges: Arc<AlpnChallenges>,
    config: Arc<rustls::ServerConfig>,
}

impl AcmeTls {
    /// An empty responder.
    pub fn new() -> Result<AcmeTls, rustls::Error> {
        let challenges = Arc::new(AlpnChallenges::default());
        Ok(AcmeTls {
            config: challenges.server_config()?,
            challenges,
        })
    }

    /// Whether this hello is a CA validating a challenge we have pending (RFC 8737: the
    /// client offers ALPN `acme-tls/1`). Other hellos offering it route normally, so an app
    /// behind passthrough can run its own TLS-ALPN-01.
    fn claims(&self, hello: &ClientHello) -> bool {
        hello.offers(ACME_TLS_ALPN) && self.challenges.has(&hello.sni)
    }
}

/// Serves one accepted connection to its end. Never panics on input; logs one line if refused.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _active = shared.metrics.accepted();
    let span = tracing::debug_span!("conn", client = %peer);
    async {
        if let Err(e) = handle(&shared, stream, peer).await {
            shared.metrics.rejected(e.reject());
            if e.is_operational() {
                tracing::warn!(reason = e.reject().label(), "refused: {e}");
            } else {
                tracing::debug!(reason = e.reject().label(), "refused: {e}");
            }
        }
    }
    .instrument(span)
    .await
}

/// Steps 1-4 (PROXY header, hello, route, admission) complete before step 5 starts, so the
/// task of a connection is sized by its longest phase, not by both phases together.
async fn handle(shared: &Shared, stream: TcpStream, peer: SocketAddr) -> Result<(), ConnError> {
    let (routed, hello) = match route(shared, stream, peer).await? {
        Next::App(routed, hello) => (routed, hello),
        Next::AcmeChallenge(c) => return answer_acme_challenge(shared, c).await,
        Next::Attestation(c) => return answer_attestation(shared, c, false).await,
        Next::AttestationSite(c) => return answer_attestation(shared, c, true).await,
    };
    let t = routed.tunables.timeouts;
    let limits = RelayLimits {
        idle: t.idle,
        write: t.write,
        linger: t.linger,
        first_data: t.first_data,
    };
    match routed.route.mode {
        Mode::Passthrough => {
            drop(hello); // not held for the life of the relay
            passthrough(shared, routed, limits).await
        }
        Mode::Terminate | Mode::TerminateH2 => terminate(shared, routed, hello, limits).await,
    }
}

/// Where a connection goes after its hello.
enum Next {
    /// To an app (its connection slot is taken by the mode: see [`admit`]).
    App(Routed, ClientHello),
    /// A CA validating a pending TLS-ALPN-01 challenge.
    AcmeChallenge(Challenge),
    /// A verifier fetching the attestation bundle (ALPN `gatehouse-attest/1`).
    Attestation(Challenge),
    /// A browser at the attestation name (`attest.<base>`): the bundle over plain HTTPS.
    AttestationSite(Challenge),
}

/// A TLS-ALPN-01 validation connection, hello buffered.
struct Challenge {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    sni: String,
    deadline: Instant,
    /// The client (the PROXY header's source, else the peer).
    client: std::net::IpAddr,
}

/// The gateway's own answer for this hello, if it is not for an app: the bundle over ALPN
/// `gatehouse-attest/1` on a name we serve, the attestation name `attest.<base>` (the
/// prefix is checked first, so other names cost no route-table load), or a pending
/// TLS-ALPN-01 validation.
fn door_of(shared: &Shared, hello: &ClientHello) -> Option<fn(Challenge) -> Next> {
    let attested = shared.attest.get().is_some();
    if attested
        && hello.offers(crate::attestation::ATTEST_ALPN)
        && shared.tls.resolver.has(&hello.sni)
    {
        return Some(Next::Attestation);
    }
    let acme = shared.acme.claims(hello);
    if attested
        && !acme
        && hello
            .sni
            .strip_prefix(gatehouse_config::ATTESTATION_LABEL)
            .is_some_and(|rest| rest.starts_with('.'))
        && shared.routes.table().is_attestation_name(&hello.sni)
        && shared.tls.resolver.has(&hello.sni)
    {
        return Some(Next::AttestationSite);
    }
    acme.then_some(Next::AcmeChallenge as fn(Challenge) -> Next)
}

/// Reads the PROXY header and hello, and routes the name.
async fn route(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<Next, ConnError> {
    let tunables = shared.tunables.load_full();
    let t = &tunables.timeouts;
    let deadline = Instant::now() + t.handshake;
    // TCP_NODELAY is inherited from the listener (listener.rs).
    let mut buf = Vec::with_capacity(2048);

    // The addresses an instance's PROXY header will carry; `None` = this socket's own
    // (looked up only if an app asks for a header: one syscall saved per connection).
    let (client_addrs, start) = if tunables.proxy_protocol_inbound {
        if !tunables
            .proxy_protocol_trusted
            .iter()
            .any(|n| n.contains(&peer.ip()))
        {
            return Err(ConnError::UntrustedProxy(peer.ip()));
        }
        let timed = timeout_at(deadline, read_proxy_header(&mut stream, &mut buf)).await;
        let (header, len) = timed.map_err(|_| ConnError::HandshakeTimeout(t.handshake))??;
        (header.addrs, len)
    } else {
        (None, 0)
    };

    let hello = match timeout_at(deadline, hello::read(&mut stream, &mut buf, start)).await {
        Err(_) => return Err(ConnError::HandshakeTimeout(t.handshake)),
        Ok(Err(io)) => return Err(ConnError::ClientIo(io)),
        Ok(Ok(Err(e))) => return Err(refuse(&mut stream, e.into()).await),
        Ok(Ok(Ok(h))) => h,
    };
    let client = client_addrs.map_or(peer, |(c, _)| c);
    if let Some(door) = door_of(shared, &hello) {
        let c = Challenge {
            stream,
            buf,
            start,
            sni: hello.sni,
            deadline,
            client: client.ip(),
        };
        return Ok(door(c));
    }

    let route = match shared.routes.resolve(&hello.sni).await {
        Ok(r) => r,
        Err(error) => {
            return Err(refuse(
                &mut stream,
                ConnError::Route {
                    sni: hello.sni,
                    error,
                },
            )
            .await)
        }
    };
    let proxy_header = match route.app.spec.proxy_protocol {
        None => None,
        Some(version) => {
            let (client, local) = match client_addrs {
                Some(addrs) => addrs,
                None => (peer, stream.local_addr().map_err(ConnError::ClientIo)?),
            };
            Some(proxy_protocol::encode(version, client, local))
        }
    };
    let routed = Routed {
        stream,
        buf,
        start,
        route,
        proxy_header,
        deadline,
        client,
        tunables,
    };
    Ok(Next::App(routed, hello))
}

/// Takes one of the app's connection slots for `client`.
fn admit(route: &Route, client: SocketAddr, share: f64) -> Result<AppSlot, ConnError> {
    route
        .app
        .admit(client.ip(), share)
        .map_err(|full| ConnError::AppFull {
            app: route.app.spec.id.clone(),
            full,
        })
}

/// Completes the handshake with the challenge certificate (ALPN `acme-tls/1`), then closes:
/// RFC 8737 §3, the CA needs nothing after the handshake.
async fn answer_acme_challenge(shared: &Shared, c: Challenge) -> Result<(), ConnError> {
    let replay = Prefixed::new(c.stream, c.buf, c.start);
    let config = shared.acme.config.clone();
    let mut tls = accept(
        config,
        replay,
        c.deadline,
        shared.tunables.load().timeouts.handshake,
    )
    .await?;
    shared.metrics.acme_challenge_answered();
    tracing::info!(name = %c.sni, "answered a TLS-ALPN-01 validation");
    let _ = tls.shutdown().await;
    Ok(())
}

/// Terminates with the name's own certificate (ALPN `gatehouse-attest/1`, or on the
/// attestation name `site` plain HTTPS), then answers HTTP/1.1 requests for the bundle on
/// that connection, bounded by [`ATTEST_CONN_LIMIT`].
async fn answer_attestation(shared: &Shared, c: Challenge, site: bool) -> Result<(), ConnError> {
    let Some(attestor) = shared.attest.get() else {
        return Ok(());
    };
    let client = c.client;
    let replay = Prefixed::new(c.stream, c.buf, c.start);
    let config = match site {
        true => shared.tls.h1.clone(),
        false => shared.tls.attest.clone(),
    };
    let tls = accept(
        config,
        replay,
        c.deadline,
        shared.tunables.load().timeouts.handshake,
    )
    .await?;
    shared.metrics.attestation_served();
    let service =
        hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let head = req.method() == hyper::Method::HEAD;
            if site && (head || req.method() == hyper::Method::GET) {
                if let Some(asset) = crate::verify_site::asset(req.uri().path()) {
                    return Ok(site_asset(asset, head));
                }
            }
            let (status, body) = match req.method() {
                &hyper::Method::GET | &hyper::Method::HEAD => attestor
                    .answer(shared, client, req.uri().path(), req.uri().query())
                    .await
                    .unwrap_or((404, bytes::Bytes::from_static(b"404 not found\n"))),
                &hyper::Method::OPTIONS => (204, bytes::Bytes::new()),
                _ => (
                    405,
                    bytes::Bytes::from_static(b"405 GET, HEAD or OPTIONS only\n"),
                ),
            };
            let mut r =
                crate::http_server::text(status, if head { bytes::Bytes::new() } else { body });
            for (name, value) in crate::attestation::CORS_HEADERS {
                r.headers_mut()
                    .insert(name, hyper::header::HeaderValue::from_static(value));
            }
            if status == 200 {
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
            }
            Ok::<_, std::convert::Infallible>(r)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    match tokio::time::timeout(ATTEST_CONN_LIMIT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("attestation connection: {e}"),
        Err(_) => tracing::debug!("attestation connection closed after {ATTEST_CONN_LIMIT:?}"),
    }
    Ok(())
}

/// One of the verifier's files (the page, its style, the widget that is also its script).
fn site_asset(
    asset: crate::verify_site::Asset,
    head: bool,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::header::{HeaderName, HeaderValue};
    let body = match head {
        true => bytes::Bytes::new(),
        false => bytes::Bytes::from_static(asset.body),
    };
    let mut r = crate::http_server::text(200, body);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if let Some(csp) = asset.csp {
        h.insert(
            hyper::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
    }
    // Scripts load cross-origin into apps' pages (with `integrity`, which needs CORS).
    for (name, value) in crate::attestation::CORS_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// How long one attestation connection may stay open.
const ATTEST_CONN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection whose hello is buffered and whose route is known. Each mode continues in its
/// own function, so the task of a connection is sized for its mode only (benches, M1).
struct Routed {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    route: Route,
    proxy_header: Option<Vec<u8>>,
    deadline: Instant,
    /// The client (the PROXY header's source, else the peer).
    client: SocketAddr,
    /// The tunables as they were when the connection arrived.
    tunables: Arc<Tunables>,
}

/// `s`: connect, send [PROXY header +] the buffered hello, relay.
async fn passthrough(shared: &Shared, c: Routed, limits: RelayLimits) -> Result<(), ConnError> {
    let Routed {
        mut stream,
        buf,
        start,
        route,
        proxy_header,
        client,
        tunables,
        ..
    } = c;
    let t = &tunables.timeouts;
    // Passthrough has no handshake of ours to wait for: the slot is taken at once.
    let _slot = match admit(&route, client, tunables.app_share_per_source) {
        Ok(slot) => slot,
        Err(e) => return Err(refuse(&mut stream, e).await),
    };
    let (mut up, _load) = match upstream::connect(&route, t.connect).await {
        Ok(u) => u,
        Err(e) => return Err(refuse(&mut stream, e.into()).await),
    };
    let mut first = proxy_header.unwrap_or_default();
    first.extend_from_slice(&buf[start..]);
    drop(buf);
    if write_within(&mut up, &first, t.write).await.is_err() {
        return Ok(()); // the instance closed at once: nothing to relay
    }
    drop(first);
    let relayed = relay::relay_tcp(&mut stream, &mut up, limits, tunables.splice).await;
    record(shared, &route, relayed);
    Ok(())
}

/// Terminate: rustls over the replayed hello, then connect, [PROXY header,] relay plaintext.
async fn terminate(
    shared: &Shared,
    c: Routed,
    hello: ClientHello,
    limits: RelayLimits,
) -> Result<(), ConnError> {
    let Routed {
        mut stream,
        buf,
        start,
        route,
        proxy_header,
        deadline,
        client,
        tunables,
    } = c;
    let t = &tunables.timeouts;
    if !shared.tls.resolver.has(&hello.sni) {
        if let Some(on_demand) = shared.on_demand.get() {
            on_demand.ask(&hello.sni, &route.app.spec.id);
        }
        return Err(refuse(&mut stream, ConnError::NoCertificate(hello.sni)).await);
    }
    // `g` names offer h2, and browsers reuse an h2 connection for any other name its
    // (wildcard) certificate covers (RFC 9113 §9.1.1): a relayed h2 stream would carry another
    // app's requests to this app. So every `g` name goes through the L7 engine, whose
    // per-request `:authority` check answers 421 to such a request (see ARCHITECTURE.md).
    let http =
        route.app.spec.mode == gatehouse_config::AppMode::Http || route.mode == Mode::TerminateH2;
    let config = match http {
        true => shared.tls.for_hello(Mode::TerminateH2, &hello),
        false => shared.tls.for_hello(route.mode, &hello),
    };
    let sni: Arc<str> = match http {
        true => hello.sni.as_str().into(),
        false => Arc::from(""),
    };
    drop(hello);
    let mut tls = accept(
        config,
        Prefixed::new(stream, buf, start),
        deadline,
        t.handshake,
    )
    .await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    shared.metrics.handshake(resumed);
    // A capped app's slot is taken once the handshake is done: a client that never finishes
    // one holds none.
    let _slot = match admit(&route, client, tunables.app_share_per_source) {
        Ok(slot) => slot,
        Err(e) => {
            let _ = tls.shutdown().await;
            return Err(e);
        }
    };
    if http {
        Box::pin(shared.http.serve(tls, client, route, sni)).await;
        return Ok(());
    }
    let (mut up, _load) = match upstream::connect(&route, t.connect).await {
        Ok(u) => u,
        Err(e) => {
            let _ = tls.shutdown().await;
            return Err(e.into());
        }
    };
    if let Some(h) = proxy_header {
        if write_within(&mut up, &h, t.write).await.is_err() {
            return Ok(());
        }
    }
    finish(shared, &route, &mut tls, &mut up, limits).await;
    Ok(())
}

/// The rustls handshake over the replayed hello, by the connection's deadline (`limit` is
/// what the deadline was set from, for the error). Boxed: the handshake future (~1.4 KB) is
/// freed when it completes instead of sizing every connection's task for its whole life
/// (benches/RESULTS.md, M1).
async fn accept(
    config: Arc<rustls::ServerConfig>,
    replay: Prefixed<TcpStream>,
    deadline: Instant,
    limit: std::time::Duration,
) -> Result<gatehouse_tls::ServerTls<Prefixed<TcpStream>>, ConnError> {
    match Box::pin(timeout_at(deadline, gatehouse_tls::accept(config, replay))).await {
        Err(_) => Err(ConnError::HandshakeTimeout(limit)),
        Ok(Err(e)) => Err(ConnError::Tls(e)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// Relays, then records the outcome. A relay's end is the clients' or apps' doing, logged at debug.
async fn finish<C, U>(
    shared: &Shared,
    route: &Route,
    client: &mut C,
    up: &mut U,
    limits: RelayLimits,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    record(shared, route, relay::relay(client, up, limits).await);
}

/// Records a relay's outcome.
fn record(
    shared: &Shared,
    route: &Route,
    (moved, result): (relay::Transferred, Result<(), relay::RelayError>),
) {
    shared.metrics.relayed(moved.up, moved.down);
    if let Err(relay::RelayError::NoData(_)) = result {
        shared.metrics.rejected(crate::metrics::Reject::NoData);
    }
    match result {
        Ok(()) => {
            tracing::debug!(app = %route.app.spec.id, up = moved.up, down = moved.down, "closed")
        }
        Err(e) => {
            tracing::debug!(app = %route.app.spec.id, up = moved.up, down = moved.down, "ended: {e}")
        }
    }
}

/// Sends the error's TLS alert, if it has one, then hands the error back.
async fn refuse(stream: &mut TcpStream, e: ConnError) -> ConnError {
    if let Some(description) = e.alert() {
        // Best effort with a short bound: the client may be gone or not reading.
        let record = alert::record(description);
        let write = stream.write_all(&record);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
        let _ = stream.shutdown().await;
    }
    e
}

async fn write_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: std::time::Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, w.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads until `buf` starts with a complete PROXY header; returns it and its length.
async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(proxy_protocol::ProxyHeader, usize), ConnError> {
    loop {
        if let Some(parsed) = proxy_protocol::parse(buf)? {
            return Ok(parsed);
        }
        buf.reserve(1024);
        let n = stream.read_buf(buf).await.map_err(ConnError::ClientIo)?;
        if n == 0 {
            return Err(ProxyHeaderError::Truncated.into());
        }
    }
}
