//! The per-request hooks: the connection's app, `Host` must be the SNI (421 otherwise: no
//! domain fronting across apps), instance choice by the shared balancer (power of two choices
//! on in-flight requests among healthy instances), retry on another instance when the connect
//! fails, forwarding headers, and short plain error bodies.

use super::{ConnInfo, Conns};
use crate::upstream::balancer::{self, Load};
use crate::upstream::{health, MAX_ATTEMPTS};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The `ProxyHttp` of the gateway.
pub struct Gatehouse {
    conns: Arc<Conns>,
    connect: Duration,
}

impl Gatehouse {
    /// Hooks reading connections from `conns`, connecting within `connect`.
    pub fn new(conns: Arc<Conns>, connect: Duration) -> Gatehouse {
        Gatehouse { conns, connect }
    }
}

/// One request's state.
#[derive(Default)]
pub struct Ctx {
    conn: Option<ConnInfo>,
    client: Option<SocketAddr>,
    /// Instance indexes tried, in order.
    tried: Vec<usize>,
    /// The load unit held on the current instance.
    load: Option<Load>,
}

/// The host part of a `Host` / `:authority` value, lower case.
fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
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

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let conn = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|d| self.conns.get(d));
        let Some(conn) = conn else {
            return respond(session, 500, "500 connection state lost\n").await;
        };
        ctx.client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let req = session.req_header();
        let authority = req
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if host_of(&authority) != *conn.sni {
            return respond(
                session,
                421,
                "421 misdirected request: Host is not this connection's name\n",
            )
            .await;
        }
        if conn.route.app.instances.is_empty() {
            return respond(session, 503, "503 no instance of this app\n").await;
        }
        ctx.conn = Some(conn);
        Ok(false)
    }

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
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(conn), Some(&i)) = (&ctx.conn, ctx.tried.last()) {
            let backoff = conn.route.app.instances[i]
                .health
                .record_failure(health::now_ms());
            tracing::warn!(app = %conn.route.app.spec.id, peer = %peer, ?backoff, "instance connect failed; marked unhealthy");
        }
        ctx.load = None;
        let left = ctx.conn.as_ref().map_or(0, |c| c.route.app.instances.len()) > ctx.tried.len();
        if left && ctx.tried.len() < MAX_ATTEMPTS {
            e.set_retry(true); // nothing reached the instance: any method may go elsewhere
        }
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
        let client = ctx.client.map(|a| a.ip().to_string()).unwrap_or_default();
        let host = conn.sni.to_string();
        // Client-supplied forwarding headers are replaced: only this hop is trusted.
        up.insert_header("x-forwarded-for", &client)?;
        up.insert_header("x-forwarded-proto", "https")?;
        up.insert_header("x-forwarded-host", &host)?;
        let for_ = match ctx.client {
            Some(SocketAddr::V6(a)) => format!("\"[{}]\"", a.ip()),
            _ => client.clone(),
        };
        up.insert_header("forwarded", format!("for={for_};host={host};proto=https"))?;
        let version = match session.req_header().version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        up.append_header("via", format!("{version} gatehouse"))?;
        if up.uri.authority().is_none() || up.headers.get(http::header::HOST).is_none() {
            up.insert_header(http::header::HOST, &host)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        let (code, body): (u16, &'static str) = match e.etype() {
            ErrorType::HTTPStatus(503) => (503, "503 no healthy instance\n"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "504 the instance did not answer in time\n")
            }
            _ => match e.esource() {
                pingora_error::ErrorSource::Upstream => (502, "502 the instance failed\n"),
                pingora_error::ErrorSource::Downstream => (0, ""),
                _ => (500, "500 internal error\n"),
            },
        };
        if code > 0 && session.response_written().is_none() {
            let _ = respond(session, code, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
