//! `mode = "http"` on hyper (issue 22, benches/HTTP-PATH.md): a client connection is served by
//! hyper's HTTP/1.1 or h2 server (its ALPN), each request forwarded to an instance over
//! HTTP/1.1 on a connection bound to the client connection while the balancer keeps choosing
//! that instance ([`upstream::Binding`]), or for `g` names over h2 on the instance's shared
//! connections ([`upstream::H2Conns`]). The per-request checks are the Pingora path's own
//! functions ([`super::proxy::refusal`], [`super::proxy::set_forwarding`]): the same refusals,
//! header hygiene and forwarding headers; the same balancer, retries and passive health; the
//! same statistics and access log ([`body::Finish`]). The attestation, channel and worker
//! paths are rare and carry their own logic: they are handed to the Pingora path on an
//! in-process connection ([`super::HttpEngine::exchange`]).
//!
//! Why: Pingora's request path alone costs more CPU per request than nginx and HAProxy spend
//! in all (0.72–0.75× the best peer with no hook of ours on HTTP/1.1, 0.37× on h2,
//! benches/HTTP-PATH.md); hyper's floor is below every peer on HTTP/1.1 and 2.6× below
//! Pingora's on h2.

pub mod body;
pub mod h2;
pub mod stall;
pub mod upstream;

use super::proxy::{self, TOO_LARGE};
use super::ConnInfo;
use crate::route::Mode;
use crate::upstream::balancer::{self, Load};
use crate::upstream::{health, own, MAX_ATTEMPTS};
use body::{Finish, ReqBody, RespBody};
use bytes::Bytes;
use gatehouse_attest::bundle::WELL_KNOWN_PATH;
use gatehouse_config::HttpConfig;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use stall::Stalled;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use upstream::{Binding, ConnectError, H2Conns, Kept, Pool};

/// Streams one h2 client connection may have open at once (Pingora's default, which served
/// h2 before).
pub const MAX_H2_STREAMS: u32 = 100;

/// The hyper path's settings, its servers and its instance connections.
pub struct HyperPath {
    config: HttpConfig,
    connect: Duration,
    idle: Duration,
    write: Duration,
    pool: Arc<Pool>,
    h2_conns: Arc<H2Conns>,
    server: hyper::server::conn::http1::Builder,
    h2_server: hyper::server::conn::http2::Builder<h2::StreamExec>,
    /// The process state (the well-known paths go to its Pingora path).
    shared: Weak<crate::conn::Shared>,
}

impl std::fmt::Debug for HyperPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HyperPath")
    }
}

/// One client connection.
pub struct Conn {
    pub(super) info: ConnInfo,
    pub(super) client: SocketAddr,
    binding: Mutex<Binding>,
    pool: Arc<Pool>,
    /// Requests whose response has not ended (one at a time on HTTP/1.1).
    open: AtomicUsize,
    /// Served over h2 (each request in a task of its own).
    h2: bool,
}

impl Drop for Conn {
    /// The client went: its instance connection serves others.
    fn drop(&mut self) {
        let binding = self.binding.get_mut().unwrap_or_else(|p| p.into_inner());
        binding.release(&self.pool);
    }
}

/// Fields of one hop only (RFC 9110 §7.6.1), never forwarded as they came.
const HOP_BY_HOP: [http::HeaderName; 5] = [
    CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
];

/// Removes the hop-by-hop fields and those `Connection` names. One pass over the names first:
/// a message with none of them (most requests) is left as it is, and `Connection: keep-alive`
/// (what most instances answer with) costs no allocation.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let (mut hop, mut chunked) = (false, false);
    for name in headers.keys() {
        hop |= HOP_BY_HOP.contains(name);
        chunked |= name == TRANSFER_ENCODING;
    }
    if hop {
        // Names beyond the fixed ones (rare): collected first, as the map cannot change while
        // its `Connection` values are read.
        let named: Vec<http::HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(n))
            })
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
    // hyper frames the message again from its body; a length beside chunking is a lie.
    if chunked && headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
}

/// Counts a failure of instance `i` of `conn`'s app in its passive health (declared ports
/// only, as the Pingora path does).
pub(super) fn instance_failed(conn: &Conn, i: usize, what: &str) {
    let route = &conn.info.route;
    if !route.app.spec.declares(route.port) {
        return;
    }
    let instance = &route.app.instances[i];
    let backoff = instance.health.record_failure(health::now_ms());
    let peer = SocketAddr::new(instance.addr, route.port);
    tracing::warn!(app = %route.app.spec.id, peer = %peer, ?backoff, "instance {what}; marked unhealthy");
}

/// A short plain answer of ours.
fn plain(code: u16, body: impl Into<Bytes>, mut finish: Finish) -> Response<RespBody> {
    let body = body.into();
    finish.status = code;
    finish.load = None;
    let length = HeaderValue::from(body.len());
    let mut resp = Response::new(RespBody::fixed(body, Some(finish)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CONTENT_LENGTH, length);
    resp
}

impl HyperPath {
    /// The path under the data path's `timeouts` and the `[proxy.http]` settings, in the
    /// process whose state `shared` is.
    pub fn new(
        timeouts: &gatehouse_config::Timeouts,
        config: &HttpConfig,
        shared: Weak<crate::conn::Shared>,
    ) -> HyperPath {
        let mut server = hyper::server::conn::http1::Builder::new();
        server
            // The header deadline is ours (`Stalled::with_header_deadline`): hyper's makes a
            // timer per request.
            .header_read_timeout(None)
            // Past these hyper answers 431 itself; below them ours (`refusal`) does.
            .max_headers(config.max_headers.saturating_add(1).max(100))
            .max_buf_size(config.max_header_bytes.saturating_mul(2).max(16 * 1024))
            .keep_alive(true);
        let mut h2_server = hyper::server::conn::http2::Builder::new(h2::StreamExec {
            write: timeouts.write,
        });
        h2_server
            .max_concurrent_streams(MAX_H2_STREAMS)
            // As on HTTP/1.1: past this h2 refuses the header itself; below it `refusal` does.
            .max_header_list_size(
                u32::try_from(config.max_header_bytes.saturating_mul(2).max(16 * 1024))
                    .unwrap_or(u32::MAX),
            );
        HyperPath {
            config: config.clone(),
            connect: timeouts.connect,
            idle: timeouts.idle,
            write: timeouts.write,
            pool: Pool::new(config.upstream_pool_size, config.upstream_idle_timeout),
            h2_conns: H2Conns::new(config.upstream_idle_timeout),
            server,
            h2_server,
            shared,
        }
    }

    /// Serves one terminated connection (h2 when `h2`, else HTTP/1.1) to its end.
    pub async fn serve<T>(self: &Arc<Self>, tls: T, info: ConnInfo, client: SocketAddr, h2: bool)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Until a whole header is in: from the start, `header_read_timeout`; from the end of
        // the last open response, the shorter of it and `timeouts.idle` (the keep-alive limit
        // on HTTP/1.1, the idle limit on h2).
        info.header_deadline.arm(self.config.header_read_timeout);
        // An idle h2 connection is told GOAWAY (no request is lost in a race with it).
        let goaway = h2.then(|| Arc::new(AtomicBool::new(false)));
        let mut io =
            Stalled::new(tls, None, self.write).with_header_deadline(info.header_deadline.clone());
        if let Some(asked) = &goaway {
            io = io.with_graceful_expiry(asked.clone());
        }
        let io = TokioIo::new(io);
        let conn = Arc::new(Conn {
            info,
            client,
            binding: Mutex::default(),
            pool: self.pool.clone(),
            open: AtomicUsize::new(0),
            h2,
        });
        let (path, served) = (self.clone(), conn.clone());
        let call = move |req| {
            let (path, conn) = (path.clone(), served.clone());
            async move { Ok::<_, std::convert::Infallible>(path.handle(conn, req).await) }
        };
        let ended = if h2 {
            // A stream's future is moved whole on its way into its task (into hyper's stream,
            // our watch, tokio's task cell, and over at its end); boxed, each of those moves
            // is a pointer's, for one allocation.
            let service = hyper::service::service_fn(move |req| Box::pin(call(req)));
            // No instance connection runs in this task on h2 (streams have tasks of their own).
            let mut http = std::pin::pin!(self.h2_server.serve_connection(io, service));
            let mut told = false;
            std::future::poll_fn(|cx| loop {
                let polled = http.as_mut().poll(cx);
                let asked = goaway.as_ref().is_some_and(|g| g.load(Ordering::Relaxed));
                if polled.is_pending() && !told && asked {
                    told = true;
                    http.as_mut().graceful_shutdown();
                    continue;
                }
                return polled;
            })
            .await
        } else {
            // hyper's HTTP/1.1 dispatcher keeps the request's future in one box of its own.
            let service = hyper::service::service_fn(call);
            beside(
                &conn,
                self.server.serve_connection(io, service).with_upgrades(),
            )
            .await
        };
        if let Err(e) = ended {
            tracing::debug!(client = %client, h2, "http connection ended: {e}");
        }
    }

    /// One request.
    async fn handle(&self, conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<RespBody> {
        let started = Instant::now();
        conn.info.header_deadline.disarm();
        let finish = Finish::new(conn.clone(), &req, started, self.config.access_log);
        let info = &conn.info;
        let target_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
        if let Some((code, body)) = proxy::refusal(
            &self.config,
            req.method(),
            target_len,
            req.uri(),
            req.headers(),
            info,
        ) {
            return plain(code, body, finish);
        }
        let path = req.uri().path();
        if path == WELL_KNOWN_PATH || super::channel::is_channel_path(path) {
            return Box::pin(self.handoff(&conn, req, finish)).await;
        }
        let upgrade =
            req.version() == http::Version::HTTP_11 && req.headers().contains_key(UPGRADE);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let protocol = headers.remove(UPGRADE).filter(|_| upgrade);
        // `g` names: h2 to the instance, where `te: trailers` is the one TE allowed, and
        // gRPC's servers look for it.
        let h2_up = info.route.mode == Mode::TerminateH2;
        let te_trailers = h2_up && headers.get(TE).is_some_and(|v| v == "trailers");
        strip_hop_by_hop(&mut headers);
        if let Some(protocol) = protocol {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, protocol);
        }
        if let Err(e) =
            proxy::set_forwarding(&self.config, &mut headers, info, parts.version, false)
        {
            tracing::warn!("forwarding headers: {e}");
            return plain(400, "400 bad request header\n", finish);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let target = if h2_up {
            // h2 carries the authority as `:authority`, not `Host` (RFC 9113 §8.3.1).
            let host = headers
                .remove(HOST)
                .unwrap_or_else(|| info.forwarded.host.clone());
            if te_trailers {
                headers.insert(TE, HeaderValue::from_static("trailers"));
            }
            let uri = http::uri::Authority::try_from(host.as_bytes())
                .ok()
                .and_then(|a| {
                    http::Uri::builder()
                        .scheme(http::uri::Scheme::HTTP)
                        .authority(a)
                        .path_and_query(path_and_query)
                        .build()
                        .ok()
                });
            match uri {
                Some(uri) => uri,
                None => return plain(400, "400 bad request header\n", finish),
            }
        } else {
            http::Uri::from(path_and_query)
        };
        let has_body = !body.is_end_stream();
        // Whether the body passed `max_request_body` (made only for a request with a body).
        let over = has_body.then(|| Arc::new(AtomicBool::new(false)));
        let body = match &over {
            Some(over) => ReqBody::new(body, self.config.max_request_body, over.clone(), self.idle),
            None => ReqBody::empty(),
        };
        let instances = &info.route.app.instances;
        // A request without a body that may be sent twice can go to another instance after
        // it reached one; keep what rebuilds it only when there is another to go to.
        let replay = (parts.method.is_idempotent() && !has_body && instances.len() > 1)
            .then(|| headers.clone());
        let build = |headers: HeaderMap, body: ReqBody| {
            let mut r = Request::new(body);
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = target.clone();
            *r.headers_mut() = headers;
            r
        };
        let mut request = Some(build(headers, body));
        let mut finish = finish;
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let mut n = 0;
        loop {
            let Some(i) = balancer::pick(instances, &tried[..n]) else {
                return plain(503, "503 no healthy instance\n", finish);
            };
            tried[n] = i;
            n += 1;
            finish.attempts = n;
            finish.instance = Some(i);
            let instance = &instances[i];
            finish.load = Some(Load::start(instance.clone()));
            let may_retry = instances.len() > n && n < MAX_ATTEMPTS;
            let addr = SocketAddr::new(instance.addr, info.route.port);
            if own::is_own(addr) {
                tracing::warn!(app = %info.route.app.spec.id, peer = %addr, "the instance address is one of the gateway's own listeners");
                finish.error = "own listener";
                return plain(502, "502 the instance failed\n", finish);
            }
            let Some(req) = request.take() else {
                return plain(500, "500 internal error\n", finish);
            };
            match self.exchange(&conn, addr, req).await {
                Exchange::Answered(kept, resp) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return match client_upgrade {
                            Some(client_side) => self.tunnel(client_side, resp, finish),
                            None => {
                                // A tunnel to the instance past every later request's checks.
                                tracing::warn!(app = %info.route.app.spec.id, peer = %addr, "the instance switched protocols on a request that asked for no upgrade");
                                finish.error = "unasked upgrade";
                                plain(502, "502 the instance failed\n", finish)
                            }
                        };
                    }
                    instance.health.record_success();
                    match (kept, conn.h2) {
                        (Upstream::H1(kept), false) => conn.binding().bind(addr, kept, &self.pool),
                        // Streams run side by side: one bound connection would make the
                        // next stream wait for this body. The pool lends it once it is free.
                        (Upstream::H1(kept), true) => self.pool.put(addr, kept),
                        (Upstream::H2(slot), _) => finish.stream = Some(slot),
                    }
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.headers.remove(TRANSFER_ENCODING);
                    finish.status = parts.status.as_u16();
                    let body = RespBody::upstream(body, self.config.upstream_read_timeout, finish);
                    return Response::from_parts(parts, body);
                }
                Exchange::ConnectFailed(e) => {
                    instance_failed(&conn, i, "connect failed");
                    finish.load = None;
                    if may_retry {
                        request = Some(e.1);
                        continue;
                    }
                    return match e.0 {
                        ConnectError::TimedOut => {
                            finish.error = "connect timeout";
                            plain(504, "504 the instance did not answer in time\n", finish)
                        }
                        ConnectError::Failed(_) => {
                            finish.error = "connect";
                            plain(502, "502 the instance failed\n", finish)
                        }
                    };
                }
                Exchange::Failed(timed_out) => {
                    if over.as_ref().is_some_and(|o| o.load(Ordering::Relaxed)) {
                        finish.error = "body too large";
                        return plain(413, TOO_LARGE, finish);
                    }
                    instance_failed(&conn, i, "failed before answering");
                    finish.load = None;
                    if let (Some(h), true) = (&replay, may_retry) {
                        request = Some(build(h.clone(), ReqBody::empty()));
                        continue;
                    }
                    return if timed_out {
                        finish.error = "read timeout";
                        plain(504, "504 the instance did not answer in time\n", finish)
                    } else {
                        finish.error = "upstream";
                        plain(502, "502 the instance failed\n", finish)
                    };
                }
            }
        }
    }

    /// Sends `req` to `addr` on the bound connection, an idle pooled one, or a new one, and
    /// waits for the response header (`upstream_read_timeout`). A reused connection that
    /// turns out closed before the request left is replaced by a new one, uncounted.
    async fn exchange(&self, conn: &Conn, addr: SocketAddr, mut req: Request<ReqBody>) -> Exchange {
        if conn.info.route.mode == Mode::TerminateH2 {
            return self.exchange_h2(addr, req).await;
        }
        let bound = conn.binding().take(addr, &self.pool);
        let mut reused = bound.or_else(|| self.pool.take(addr));
        loop {
            let ready = match reused.take() {
                Some(mut k) => k.sender.ready().await.is_ok().then_some(k),
                None => None,
            };
            let mut kept = match ready {
                Some(k) => k,
                None => match self.pool.take(addr) {
                    Some(k) => k,
                    // Boxed, as every rare await here: the request's future is moved whole
                    // (into its h2 stream's task, into hyper's dispatcher), and an inline
                    // connect (or h2 handshake) would make it kilobytes larger.
                    None => match Box::pin(upstream::connect(addr, self.connect)).await {
                        Ok((k, driver)) => {
                            // On h2 this request runs in its stream's task, not the client
                            // connection's: nothing would poll an adopted driver until that
                            // task woke for something else.
                            match conn.h2 {
                                false => conn.binding().adopt(k.id, driver),
                                true => upstream::spawn(driver),
                            }
                            k
                        }
                        Err(e) => return Exchange::ConnectFailed(Box::new((e, req))),
                    },
                },
            };
            let sent = kept.sender.try_send_request(req);
            match tokio::time::timeout(self.config.upstream_read_timeout, sent).await {
                Err(_) => return Exchange::Failed(true),
                Ok(Ok(resp)) => return Exchange::Answered(Upstream::H1(kept), resp),
                Ok(Err(mut e)) => match e.take_message() {
                    // Not sent: the connection had closed; once more on another.
                    Some(back) => req = back,
                    None => return Exchange::Failed(false),
                },
            }
        }
    }

    /// Sends `req` to `addr` over h2 on the instance's shared connection (made when there is
    /// none), and waits for the response header (`upstream_read_timeout`). A connection found
    /// closed before the request left is replaced once, uncounted.
    async fn exchange_h2(&self, addr: SocketAddr, mut req: Request<ReqBody>) -> Exchange {
        for _ in 0..2 {
            let (mut sender, slot) = match self.h2_conns.get(addr) {
                Some(found) => found,
                None => match Box::pin(upstream::connect_h2(addr, self.connect)).await {
                    Ok(s) => {
                        let slot = self.h2_conns.put(addr, s.clone());
                        (s, slot)
                    }
                    Err(e) => return Exchange::ConnectFailed(Box::new((e, req))),
                },
            };
            if sender.ready().await.is_err() {
                continue; // closed: the next lookup drops it
            }
            let sent = sender.try_send_request(req);
            match tokio::time::timeout(self.config.upstream_read_timeout, sent).await {
                Err(_) => return Exchange::Failed(true),
                Ok(Ok(resp)) => return Exchange::Answered(Upstream::H2(slot), resp),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Exchange::Failed(false),
                },
            }
        }
        Exchange::Failed(false)
    }

    /// Answers a 101 to a request that asked for it and joins the two upgraded connections,
    /// each read bounded by `timeouts.idle`, each write by `timeouts.write` (client) or
    /// `idle` (instance), as the TCP relay's are.
    fn tunnel(
        &self,
        client_side: hyper::upgrade::OnUpgrade,
        mut resp: Response<Incoming>,
        mut finish: Finish,
    ) -> Response<RespBody> {
        let instance_side = hyper::upgrade::on(&mut resp);
        let (idle, write) = (self.idle, self.write);
        tokio::spawn(async move {
            let (Ok(c), Ok(u)) = tokio::join!(client_side, instance_side) else {
                return;
            };
            let mut c = Stalled::new(TokioIo::new(c), Some(idle), write);
            let mut u = Stalled::new(TokioIo::new(u), Some(idle), idle);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        });
        let (parts, _) = resp.into_parts();
        finish.status = 101;
        finish.rearm = false; // the connection is a tunnel now: no header will come
        Response::from_parts(parts, RespBody::fixed(Bytes::new(), Some(finish)))
    }

    /// Serves a request for the attestation bundle, the channel, its keys or its worker
    /// through the Pingora path (their logic lives there), its body held up to the channel's
    /// request limit (413 beyond), the answer read whole.
    async fn handoff(
        &self,
        conn: &Conn,
        req: Request<Incoming>,
        mut finish: Finish,
    ) -> Response<RespBody> {
        use http_body_util::BodyExt;
        let limit = self.config.channel.max_request;
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, limit as usize)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                let why = format!(
                    "413 encapsulated request over proxy.http.channel.max_request ({limit} bytes)\n"
                );
                return plain(413, why, finish);
            }
            Err(e) => {
                tracing::debug!(client = %conn.client.ip(), "request body: {e}");
                finish.error = "client";
                return plain(400, "400 the request body broke off\n", finish);
            }
        };
        let Some(shared) = self.shared.upgrade() else {
            return plain(503, "503 shutting down\n", finish);
        };
        finish.counted = false; // the Pingora path counts and logs it
        let mut inner = Request::new(http_body_util::Full::new(body.clone()));
        *inner.method_mut() = parts.method;
        let mut headers = parts.headers;
        // The in-process hop is HTTP/1.1: an h2 request's `:authority` becomes its `Host`.
        if let (Some(a), false) = (parts.uri.authority(), headers.contains_key(HOST)) {
            if let Ok(host) = HeaderValue::from_str(a.as_str()) {
                headers.insert(HOST, host);
            }
        }
        *inner.uri_mut() = parts.uri.path_and_query().map_or_else(
            || http::Uri::from_static("/"),
            |p| http::Uri::from(p.clone()),
        );
        *inner.headers_mut() = headers;
        strip_hop_by_hop(inner.headers_mut());
        inner.headers_mut().remove(TRANSFER_ENCODING);
        if !body.is_empty() {
            inner
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let max = self.config.channel.max_response.saturating_add(1 << 20);
        match shared
            .http
            .exchange(conn.info.clone(), conn.client, inner, max)
            .await
        {
            Ok((mut parts, body)) => {
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.remove(TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                finish.status = parts.status.as_u16();
                Response::from_parts(parts, RespBody::fixed(body, Some(finish)))
            }
            Err(why) => {
                tracing::warn!(client = %conn.client.ip(), "a well-known request failed: {why}");
                plain(502, "502 the instance failed\n", finish)
            }
        }
    }
}

/// The instance connection a response came on.
enum Upstream {
    H1(Kept),
    H2(upstream::StreamSlot),
}

/// How one attempt at an instance went.
enum Exchange {
    /// With the connection it came on: HTTP/1.1 (to bind), or the stream's place on an h2
    /// one (held until the response ends).
    Answered(Upstream, Response<Incoming>),
    /// No connection; the request comes back for another instance.
    ConnectFailed(Box<(ConnectError, Request<ReqBody>)>),
    /// Sent, no answer (`true`: none within `upstream_read_timeout`).
    Failed(bool),
}

/// Runs `http`, a client connection's server, with the connection's own instance connection
/// beside it: polled before it (an answer that came is read first) and after it (a request
/// just sent leaves in the same turn).
async fn beside<F>(conn: &Conn, http: F) -> Result<(), hyper::Error>
where
    F: Future<Output = Result<(), hyper::Error>>,
{
    let mut http = std::pin::pin!(http);
    std::future::poll_fn(|cx| {
        conn.binding().poll_driver(cx);
        let polled = http.as_mut().poll(cx);
        if polled.is_pending() {
            conn.binding().poll_driver(cx);
        }
        polled
    })
    .await
}

impl Conn {
    fn binding(&self) -> std::sync::MutexGuard<'_, Binding> {
        self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
