//! The per-request hooks: the connection's app, `Host` must be the SNI (421 otherwise: no
//! domain fronting across apps), header and body limits (431, 413), instance choice by the
//! shared balancer (power of two choices on in-flight requests among healthy instances), h2
//! to instances of `g` names, retry on another instance when the connect fails or an
//! idempotent request got no byte of answer, forwarding headers, short plain error bodies,
//! per-app statistics and the access log.

use super::{ConnInfo, Conns};
use crate::route::Mode;
use crate::upstream::balancer::{self, Load};
use crate::upstream::{health, MAX_ATTEMPTS};
use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_attest::bundle::WELL_KNOWN_PATH;
use gatehouse_config::{ForwardedMode, HttpConfig};
use http::HeaderValue;
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `ProxyHttp` of the gateway.
pub struct Gatehouse {
    conns: Arc<Conns>,
    connect: Duration,
    /// No progress reading a request body or writing to an instance for this long ends it.
    idle: Duration,
    /// A response write to the client blocked this long ends the request.
    write: Duration,
    config: HttpConfig,
    /// The process state (the attestation bundle is answered from it).
    shared: std::sync::Weak<crate::conn::Shared>,
}

impl Gatehouse {
    /// Hooks reading connections from `conns`, under the data path's `timeouts`.
    pub fn new(
        conns: Arc<Conns>,
        timeouts: &gatehouse_config::Timeouts,
        config: HttpConfig,
        shared: std::sync::Weak<crate::conn::Shared>,
    ) -> Gatehouse {
        Gatehouse {
            conns,
            connect: timeouts.connect,
            idle: timeouts.idle,
            write: timeouts.write,
            config,
            shared,
        }
    }

    /// Answers `GET /.well-known/gatehouse/attestation` on an app's own name (CORS open,
    /// so any page can verify the domain), `OPTIONS` for a preflight; never reaches the app.
    async fn attestation(&self, session: &mut Session, client: Option<SocketAddr>) -> Result<bool> {
        let shared = self.shared.upgrade();
        let attestor = shared.as_ref().and_then(|s| s.attest.get());
        let req = session.req_header();
        let method = req.method.clone();
        let query = req.uri.query().map(str::to_owned);
        let (status, body) = match (&shared, attestor, &method) {
            (_, _, &http::Method::OPTIONS) => (204, Bytes::new()),
            (Some(shared), Some(a), &http::Method::GET | &http::Method::HEAD) => {
                let ip = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.ip());
                a.answer(shared, ip, WELL_KNOWN_PATH, query.as_deref())
                    .await
                    .unwrap_or((404, Bytes::from_static(b"404 not found\n")))
            }
            (_, None, _) | (None, _, _) => (
                404,
                Bytes::from_static(b"404 no attestation here (tee.provider = \"none\")\n"),
            ),
            _ => (405, Bytes::from_static(b"405 GET, HEAD or OPTIONS only\n")),
        };
        let mut resp = ResponseHeader::build(status, Some(6))?;
        let kind = match status {
            200 => "application/json",
            _ => "text/plain; charset=utf-8",
        };
        resp.insert_header("content-type", kind)?;
        resp.insert_header("cache-control", "no-cache")?;
        for (name, value) in crate::attestation::CORS_HEADERS {
            resp.insert_header(name, value)?;
        }
        if status != 204 {
            resp.insert_header("content-length", body.len().to_string())?;
        }
        let head = method == http::Method::HEAD || body.is_empty();
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

/// One request's state.
#[derive(Default)]
pub struct Ctx {
    conn: Option<ConnInfo>,
    pub(super) client: Option<SocketAddr>,
    /// When the request header was parsed.
    started: Option<Instant>,
    /// Instance indexes tried, in order.
    tried: Vec<usize>,
    /// The load unit held on the current instance.
    load: Option<Load>,
    /// Request body bytes seen so far.
    body_bytes: u64,
}

impl Ctx {
    /// The client's address for a log line.
    pub(super) fn client_ip(&self) -> String {
        self.client.map(|c| c.ip().to_string()).unwrap_or_default()
    }
}

/// The host part of a `Host` / `:authority` value, lower case.
pub(super) fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The size of a request header as sent in HTTP/1.1 (request line, fields, line ends).
fn header_bytes(method: &http::Method, target_len: usize, headers: &http::HeaderMap) -> usize {
    let line = method.as_str().len() + target_len + 12;
    let fields: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    line + fields + 2
}

async fn respond(session: &mut Session, code: u16, body: &'static str) -> Result<bool> {
    let mut resp = ResponseHeader::build(code, Some(2))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}

static HTTPS: HeaderValue = HeaderValue::from_static("https");
const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const GATEHOUSE_CHANNEL: http::HeaderName = http::HeaderName::from_static("gatehouse-channel");

/// Whether `name` (lower case) claims the client's address, port or scheme, as other proxies
/// and CDNs set them. With `forwarded = "replace"` a client's own are removed (X-Real-IP is
/// then set to the client's address), so an app that reads any of them reads this hop's
/// truth or nothing. A `match` on the name: one pass over a request's fields, no table scan.
fn claims_client(name: &str) -> bool {
    matches!(
        name,
        "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
            | "x-forwarded"
            | "forwarded-for"
            | "x-forwarded-port"
            | "x-forwarded-server"
            | "x-forwarded-prefix"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
            | "x-url-scheme"
            | "front-end-https"
    )
}

/// Whether the client asked to switch protocols (an HTTP/1.1 `Upgrade` request).
pub(super) fn asked_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11 && req.headers.contains_key(http::header::UPGRADE)
}

/// A request header's fields as the hooks edit them: Pingora's `RequestHeader` (which keeps
/// the client's name case beside the map) and hyper's `HeaderMap` alike.
pub(super) trait Fields {
    /// The fields.
    fn map(&self) -> &http::HeaderMap;
    /// Removes every field called `name`.
    fn remove(&mut self, name: &http::HeaderName);
    /// Replaces every field called `name` with one of `value`.
    fn insert(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()>;
    /// Adds a field.
    fn append(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()>;
}

impl Fields for RequestHeader {
    fn map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
    fn append(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

impl Fields for http::HeaderMap {
    fn map(&self) -> &http::HeaderMap {
        self
    }
    fn remove(&mut self, name: &http::HeaderName) {
        http::HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()> {
        http::HeaderMap::insert(self, name, value);
        Ok(())
    }
    fn append(&mut self, name: http::HeaderName, value: HeaderValue) -> Result<()> {
        http::HeaderMap::append(self, name, value);
        Ok(())
    }
}

/// Request header hygiene before any forwarding header is set, in one pass over the fields:
/// names with `_` dropped (unless kept), the client-address family dropped (with
/// `strip_claims`), and `cookie` fields joined into one with "; " (RFC 9113 §8.2.3: h2
/// clients send one field per cookie; an HTTP/1.1 instance must get a single line). Nothing
/// is allocated when nothing is removed.
fn clean<F: Fields>(up: &mut F, keep_underscores: bool, strip_claims: bool) -> Result<()> {
    let doomed: Vec<http::HeaderName> = up
        .map()
        .keys()
        .filter(|k| {
            let name = k.as_str();
            (!keep_underscores && name.contains('_')) || (strip_claims && claims_client(name))
        })
        .cloned()
        .collect();
    for name in doomed {
        up.remove(&name);
    }
    let cookies = up.map().get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let joined: Vec<u8> = cookies
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let value = HeaderValue::from_bytes(&joined)
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "cookie", e))?;
        up.insert(http::header::COOKIE, value)?;
    }
    Ok(())
}

/// This hop's forwarding header values for one connection (its client and name), made once
/// so that a request pays header-map inserts of shared values, not formatting.
#[derive(Debug)]
pub struct Forwarded {
    client: HeaderValue,
    pub(super) host: HeaderValue,
    forwarded: HeaderValue,
}

impl Forwarded {
    /// The values for a connection from `client` to `sni`.
    pub fn new(client: SocketAddr, sni: &str) -> Forwarded {
        let ip = client.ip().to_string();
        let for_ = match client {
            SocketAddr::V6(_) => format!("\"[{ip}]\""),
            SocketAddr::V4(_) => ip.clone(),
        };
        // An IP, a routed name (LDH) and their combination are always valid header values.
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        Forwarded {
            client: value(&ip),
            host: value(sni),
            forwarded: value(&format!("for={for_};host={sni};proto=https")),
        }
    }
}

pub(super) const TOO_LARGE: &str = "413 request body larger than proxy.http.max_request_body\n";

/// The answer to a request that must not reach an instance, if any: too many or too large
/// header fields (431), a `Host` / `:authority` other than the connection's name (421), a
/// declared body over the limit (413), an app with no instance (503). `target_len` is the
/// length of the request target as sent.
pub(super) fn refusal(
    config: &HttpConfig,
    method: &http::Method,
    target_len: usize,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    conn: &ConnInfo,
) -> Option<(u16, &'static str)> {
    if headers.len() > config.max_headers {
        return Some((431, "431 too many request header fields\n"));
    }
    if header_bytes(method, target_len, headers) > config.max_header_bytes {
        return Some((431, "431 request header too large\n"));
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    if host_of(authority) != *conn.sni {
        return Some((
            421,
            "421 misdirected request: Host is not this connection's name\n",
        ));
    }
    let limit = config.max_request_body;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if limit > 0 && declared.is_some_and(|n| n > limit) {
        return Some((413, TOO_LARGE));
    }
    if conn.route.app.instances.is_empty() {
        return Some((503, "503 no instance of this app\n"));
    }
    None
}

/// Sets this hop's forwarding headers on `up`, a request of `version` from `conn` (replacing
/// or appending to the client's, after [`clean`]); `has_authority`: the request target
/// carries the authority (else `Host` is set when missing).
pub(super) fn set_forwarding<F: Fields>(
    config: &HttpConfig,
    up: &mut F,
    conn: &ConnInfo,
    version: http::Version,
    has_authority: bool,
) -> Result<()> {
    let f = &conn.forwarded;
    let replace = config.forwarded == ForwardedMode::Replace;
    clean(up, config.keep_underscore_headers, replace)?;
    let earlier = |up: &F, name: &str| {
        let values: Vec<&str> = up
            .map()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    use http::header::{FORWARDED, HOST, VIA};
    match config.forwarded {
        ForwardedMode::Replace => {
            up.insert(X_REAL_IP, f.client.clone())?;
            up.insert(X_FORWARDED_FOR, f.client.clone())?;
            up.insert(X_FORWARDED_PROTO, HTTPS.clone())?;
            up.insert(X_FORWARDED_HOST, f.host.clone())?;
            up.insert(FORWARDED, f.forwarded.clone())?;
        }
        ForwardedMode::Append => {
            // Ours are built from an IP and a routed name: always visible ASCII.
            let ours = |v: &HeaderValue| v.to_str().unwrap_or_default().to_owned();
            let joined = match earlier(up, "x-forwarded-for") {
                Some(e) => format!("{e}, {}", ours(&f.client)),
                None => ours(&f.client),
            };
            let fwd = match earlier(up, "forwarded") {
                Some(e) => format!("{e}, {}", ours(&f.forwarded)),
                None => ours(&f.forwarded),
            };
            let value = |s: String| {
                HeaderValue::try_from(s)
                    .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "forwarded", e))
            };
            up.insert(X_FORWARDED_FOR, value(joined)?)?;
            up.insert(FORWARDED, value(fwd)?)?;
            if up.map().get(X_FORWARDED_PROTO).is_none() {
                up.insert(X_FORWARDED_PROTO, HTTPS.clone())?;
            }
            if up.map().get(X_FORWARDED_HOST).is_none() {
                up.insert(X_FORWARDED_HOST, f.host.clone())?;
            }
        }
    }
    let via = match version {
        http::Version::HTTP_2 => "2 gatehouse",
        http::Version::HTTP_10 => "1.0 gatehouse",
        _ => "1.1 gatehouse",
    };
    up.append(VIA, HeaderValue::from_static(via))?;
    // Only the gateway says a request came through the encrypted channel.
    up.remove(&GATEHOUSE_CHANNEL);
    if conn.channel {
        up.insert(GATEHOUSE_CHANNEL, HeaderValue::from_static("ohttp"))?;
    }
    if !has_authority || up.map().get(HOST).is_none() {
        up.insert(HOST, f.host.clone())?;
    }
    Ok(())
}

impl Gatehouse {
    /// Whether another instance may still be tried.
    fn may_retry(ctx: &Ctx) -> bool {
        let n = ctx.conn.as_ref().map_or(0, |c| c.route.app.instances.len());
        n > ctx.tried.len() && ctx.tried.len() < MAX_ATTEMPTS
    }

    /// Counts the current instance's failure in its passive health.
    fn instance_failed(ctx: &mut Ctx, peer: &HttpPeer, what: &str) {
        let declared = |c: &crate::http::ConnInfo| c.route.app.spec.declares(c.route.port);
        if let (Some(conn), Some(&i)) =
            (ctx.conn.as_ref().filter(|c| declared(c)), ctx.tried.last())
        {
            let backoff = conn.route.app.instances[i]
                .health
                .record_failure(health::now_ms());
            tracing::warn!(app = %conn.route.app.spec.id, peer = %peer, ?backoff, "instance {what}; marked unhealthy");
        }
        ctx.load = None;
    }
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        let conn = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|d| self.conns.get(d));
        let Some(conn) = conn else {
            return respond(session, 500, "500 connection state lost\n").await;
        };
        // The header is in: the body and upgrades run unbounded by it, but not by the same
        // idle and write-stall limits as the TCP relay: a client that stops reading its
        // response frees the instance connection after `timeouts.write` (h1 and h2 alike).
        conn.header_deadline.disarm();
        session.set_write_timeout(Some(self.write));
        session.set_read_timeout(Some(self.idle));
        if self.config.min_send_rate > 0 {
            session.set_min_send_rate(Some(self.config.min_send_rate));
        }
        ctx.client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let req = session.req_header();
        let refusal = refusal(
            &self.config,
            &req.method,
            req.raw_path().len(),
            &req.uri,
            &req.headers,
            &conn,
        );
        ctx.conn = Some(conn);
        match refusal {
            Some((code, body)) => respond(session, code, body).await,
            None if session.req_header().uri.path() == WELL_KNOWN_PATH => {
                self.attestation(session, ctx.client).await
            }
            None if super::channel::is_channel_path(session.req_header().uri.path()) => {
                let (Some(shared), Some(conn)) = (self.shared.upgrade(), ctx.conn.clone()) else {
                    return respond(session, 503, "503 shutting down\n").await;
                };
                super::channel::serve(&shared, session, ctx, &conn).await
            }
            None => Ok(false),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let limit = self.config.max_request_body;
        if limit > 0 && ctx.body_bytes > limit {
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
        }
        Ok(())
    }

    /// None: Pingora's default builds a (disabled) compression module for every request,
    /// ≈ 4 % of the HTTP mode's allocations; the gateway passes bodies as the app sent them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let conn = ctx
            .conn
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let instances = &conn.route.app.instances;
        let i = balancer::pick(instances, &ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no instance left"))?;
        ctx.tried.push(i);
        let instance = &instances[i];
        ctx.load = Some(Load::start(instance.clone()));
        let addr = SocketAddr::new(instance.addr, conn.route.port);
        if crate::upstream::own::is_own(addr) {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "the instance address is one of the gateway's own listeners",
            );
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect);
        peer.options.read_timeout = Some(self.config.upstream_read_timeout);
        peer.options.idle_timeout = Some(self.config.upstream_idle_timeout);
        peer.options.write_timeout = Some(self.idle);
        if conn.route.mode == Mode::TerminateH2 {
            // `g` names: h2 with prior knowledge to the instance (plaintext on the VPC).
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        Gatehouse::instance_failed(ctx, peer, "connect failed");
        if Gatehouse::may_retry(ctx) {
            e.set_retry(true); // nothing reached the instance: any method may go elsewhere
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("instance {peer}"));
        // Only a request that may be sent twice, whose whole body is still held, and of whose
        // answer nothing has reached the client, goes to another instance.
        let again = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && e.esource() == &ErrorSource::Upstream;
        // Passive health counts every failure of the instance's own: before its answer (any
        // method), and a response that broke off after it began (the client saw the break;
        // an instance cutting bodies must lose its share as one refusing them does).
        if e.esource() == &ErrorSource::Upstream {
            let what = if session.response_written().is_some() {
                "broke off mid-response"
            } else {
                "failed before answering"
            };
            Gatehouse::instance_failed(ctx, peer, what);
        }
        e.set_retry(again && Gatehouse::may_retry(ctx));
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(conn), Some(&i)) = (&ctx.conn, ctx.tried.last()) {
            conn.route.app.instances[i].health.record_success();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(conn) = &ctx.conn else {
            return Ok(());
        };
        let version = session.req_header().version;
        let has_authority = up.uri.authority().is_some();
        set_forwarding(&self.config, up, conn, version, has_authority)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // A 101 nobody asked for would turn the connection into a tunnel to the instance,
        // past every later request's checks.
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !asked_upgrade(session.req_header())
        {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "the instance switched protocols on a request that asked for no upgrade",
            );
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        let (code, body): (u16, &'static str) = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(503), _) => (503, "503 no healthy instance\n"),
            (ErrorType::HTTPStatus(413), _) => (413, TOO_LARGE),
            (ErrorType::HTTPStatus(502), _) => (502, "502 the instance failed\n"),
            (_, ErrorSource::Downstream) => (0, ""),
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                _,
            ) => (504, "504 the instance did not answer in time\n"),
            (_, ErrorSource::Upstream) => (502, "502 the instance failed\n"),
            _ => (500, "500 internal error\n"),
        };
        if code > 0 && session.response_written().is_none() {
            let _ = respond(session, code, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx)
    where
        Ctx: Send + Sync,
    {
        let Some(conn) = &ctx.conn else {
            return;
        };
        if let Some(limit) = conn.rearm_after_response {
            conn.header_deadline.arm(limit); // until the next request's header
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let took = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        conn.route.app.http_stats.record(status, took);
        if self.config.access_log {
            let req = session.req_header();
            let instance = ctx
                .tried
                .last()
                .map(|&i| conn.route.app.instances[i].addr.to_string());
            tracing::info!(
                target: "gatehouse::access",
                app = %conn.route.app.spec.id,
                client = %ctx.client.map(|c| c.ip().to_string()).unwrap_or_default(),
                method = %req.method,
                // A request opened from the encrypted channel keeps its path out of the
                // log: the log leaves the TEE, the path was sealed.
                path = %if conn.channel { "(sealed)" } else { req.uri.path() },
                version = ?req.version,
                status,
                ms = took.as_millis() as u64,
                instance = %instance.as_deref().unwrap_or("-"),
                attempts = ctx.tried.len(),
                error = %e.map(|e| e.etype().as_str()).unwrap_or("-"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_brackets_dot_and_case() {
        assert_eq!(host_of("Web.GW.test:8443"), "web.gw.test");
        assert_eq!(host_of("web.gw.test."), "web.gw.test");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of(""), "");
    }

    #[test]
    fn forwarded_values_quote_v6_clients() {
        let f = Forwarded::new("[2001:db8::1]:5000".parse().unwrap(), "web.gw.test");
        assert_eq!(f.client, "2001:db8::1");
        assert_eq!(
            f.forwarded,
            "for=\"[2001:db8::1]\";host=web.gw.test;proto=https"
        );
        let f = Forwarded::new("10.0.0.7:1".parse().unwrap(), "web.gw.test");
        assert_eq!(f.forwarded, "for=10.0.0.7;host=web.gw.test;proto=https");
    }

    #[test]
    fn exposure_clean_drops_look_alikes_and_claims_and_joins_cookies() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            ("host", "a.b"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-request-id", "keep"),
        ] {
            h.append_header(k.to_owned(), v).unwrap();
        }
        h.append_header("cookie", "a=1").unwrap();
        h.append_header("cookie", "b=2").unwrap();
        let mut appended = h.clone();
        clean(&mut h, false, true).unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["cookie", "host", "x-request-id"]);
        assert_eq!(h.headers.get("cookie").unwrap(), "a=1; b=2");
        // Behind a trusted balancer (append) the claims stay; look-alikes never do.
        clean(&mut appended, false, false).unwrap();
        assert!(appended.headers.get("x-real-ip").is_some());
        assert!(appended.headers.get("x_forwarded_for").is_none());
    }

    #[test]
    fn header_bytes_counts_the_wire_form() {
        let mut h = RequestHeader::build("GET", b"/abc", None).unwrap();
        h.insert_header("host", "a.b").unwrap();
        // "GET /abc HTTP/1.1\r\n" + "host: a.b\r\n" + "\r\n"
        assert_eq!(
            header_bytes(&h.method, h.raw_path().len(), &h.headers),
            19 + 11 + 2
        );
    }
}
