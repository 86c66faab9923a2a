//! The encrypted channel on an app's names: `POST /.well-known/gatehouse/channel` with a
//! `message/ohttp-req` body is opened here, inside the TEE, and the Binary HTTP request in it
//! is served as any other request of the app: it goes through the same Pingora proxy on a
//! connection of its own ([`super::HttpEngine::inner`]) registered with the outer connection's
//! route, name and client, so the Host check, limits, balancer, retries, forwarding headers
//! (plus `gatehouse-channel: ohttp`, which no client can set) and the access log all apply.
//! Its response is read whole (up to `max_response`), encoded as Binary HTTP and sealed to the
//! request's context. `GET /.well-known/gatehouse/ohttp-keys` serves the public keys (the
//! attested copy is in the bundle's claims; a client takes it from there), and
//! `/.well-known/gatehouse/channel-worker.js` the service worker that speaks the channel for
//! the app's pages (`web/src/channel-worker.js`, `Service-Worker-Allowed: /`).

use super::proxy::Ctx;
use super::ConnInfo;
use bytes::Bytes;
use gatehouse_attest::bundle::CHANNEL_PATH;
use gatehouse_channel::gate::{seal_response, KEYS_MEDIA_TYPE};
use gatehouse_channel::{REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE};
use http_body_util::Full;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Where the public keys are served (beside the channel).
pub const KEYS_PATH: &str = "/.well-known/gatehouse/ohttp-keys";
/// Where the service worker that speaks the channel is served (scope: the whole origin).
pub const WORKER_PATH: &str = "/.well-known/gatehouse/channel-worker.js";

/// Fields a Binary HTTP message may carry that are this hop's business, not the message's.
fn hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name.to_ascii_lowercase().as_slice(),
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"transfer-encoding"
            | b"te"
            | b"upgrade"
            | b"content-length"
            | b"host"
            | b"trailer"
    )
}

/// Answers with `body` and `content_type`, never cached.
async fn answer(
    session: &mut Session,
    code: u16,
    content_type: &str,
    body: Vec<u8>,
) -> Result<bool> {
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(true)
}

/// A refusal in plain text, logged with its cause.
async fn refuse(session: &mut Session, ctx: &Ctx, code: u16, why: &str) -> Result<bool> {
    tracing::warn!(
        client = %ctx.client_ip(),
        status = code,
        "encrypted channel request refused: {why}"
    );
    answer(
        session,
        code,
        "text/plain; charset=utf-8",
        format!("{code} {why}\n").into_bytes(),
    )
    .await
}

/// Serves a request to [`CHANNEL_PATH`] or [`KEYS_PATH`] on `conn`'s app.
pub(super) async fn serve(
    shared: &crate::conn::Shared,
    session: &mut Session,
    ctx: &Ctx,
    conn: &ConnInfo,
) -> Result<bool> {
    if !conn.route.app.spec.encrypted_channel {
        return refuse(
            session,
            ctx,
            404,
            "this app does not serve the encrypted channel",
        )
        .await;
    }
    if conn.channel {
        return refuse(session, ctx, 400, "a channel request inside the channel").await;
    }
    let Some(channel) = shared.channel.get() else {
        return refuse(
            session,
            ctx,
            503,
            "this gateway has no channel key (it needs attestation and a store)",
        )
        .await;
    };
    let req = session.req_header();
    if req.uri.path() == WORKER_PATH {
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "text/javascript; charset=utf-8")?;
        resp.insert_header(
            "content-length",
            crate::verify_site::CHANNEL_WORKER.len().to_string(),
        )?;
        resp.insert_header("service-worker-allowed", "/")?;
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("x-content-type-options", "nosniff")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(
                Some(Bytes::from_static(crate::verify_site::CHANNEL_WORKER)),
                true,
            )
            .await?;
        return Ok(true);
    }
    if req.uri.path() == KEYS_PATH {
        return match channel.ohttp_keys() {
            Ok(list) => answer(session, 200, KEYS_MEDIA_TYPE, list).await,
            Err(e) => refuse(session, ctx, 500, &e.to_string()).await,
        };
    }
    if req.method != http::Method::POST {
        return refuse(session, ctx, 405, "the channel takes POST").await;
    }
    let media = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !media.eq_ignore_ascii_case(REQUEST_MEDIA_TYPE) {
        let why = format!("content-type must be {REQUEST_MEDIA_TYPE}, not {media:?}");
        return refuse(session, ctx, 415, &why).await;
    }
    let limit = channel.config.max_request;
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            let why =
                format!("encapsulated request over proxy.http.channel.max_request ({limit} bytes)");
            return refuse(session, ctx, 413, &why).await;
        }
        body.extend_from_slice(&chunk);
    }
    let keys = channel.keys_for(body.first().copied().unwrap_or(0)).await;
    let opened = match channel
        .gate()
        .open(&keys, &body, gatehouse_attest::unix_now())
    {
        Ok(o) => o,
        Err(e) => return refuse(session, ctx, e.status(), &e.to_string()).await,
    };
    let inner = match inner_request(&opened.request, &conn.sni) {
        Ok(r) => r,
        Err(why) => return refuse(session, ctx, 400, &why).await,
    };
    let mut inner_conn = conn.clone();
    inner_conn.channel = true;
    let client = ctx.client.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let response = match shared
        .http
        .inner(inner_conn, client, inner, channel.config.max_response)
        .await
    {
        Ok(r) => r,
        Err(why) => return refuse(session, ctx, 502, &why).await,
    };
    match seal_response(opened.response, &response) {
        Ok(sealed) => answer(session, 200, RESPONSE_MEDIA_TYPE, sealed).await,
        Err(e) => refuse(session, ctx, 500, &e.to_string()).await,
    }
}

/// Whether `path` is one the channel answers.
pub fn is_channel_path(path: &str) -> bool {
    path == CHANNEL_PATH || path == KEYS_PATH || path == WORKER_PATH
}

/// The inner Binary HTTP request as an HTTP/1.1 request to this app: `https` only, its own
/// name only (the Host check refuses another), no request for the channel itself.
fn inner_request(m: &bhttp::Message, sni: &str) -> Result<http::Request<Full<Bytes>>, String> {
    let c = m.control();
    let text = |v: Option<&[u8]>, what: &str| {
        v.and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("the inner request has no {what}"))
    };
    let method = text(c.method(), "method")?;
    let scheme = text(c.scheme(), "scheme")?;
    if scheme != "https" {
        return Err(format!(
            "the inner request's scheme is {scheme:?}, not https"
        ));
    }
    let path = text(c.path(), "path")?;
    if !path.starts_with('/') {
        return Err("the inner request's path does not start with /".into());
    }
    if is_channel_path(path.split('?').next().unwrap_or("")) {
        return Err("a channel request inside the channel".into());
    }
    let authority = match c.authority() {
        Some(a) if !a.is_empty() => text(Some(a), "authority")?,
        _ => sni.to_owned(),
    };
    let mut b = http::Request::builder()
        .method(method.as_str())
        .uri(path.as_str())
        .header(http::header::HOST, authority);
    for f in m.header().iter() {
        if !hop_by_hop(f.name()) {
            b = b.header(f.name(), f.value());
        }
    }
    let content = Bytes::copy_from_slice(m.content());
    if !content.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        b = b.header(http::header::CONTENT_LENGTH, content.len());
    }
    b.body(Full::new(content))
        .map_err(|e| format!("the inner request is not valid HTTP: {e}"))
}

/// An instance's response as a Binary HTTP response.
pub(super) fn outer_response(parts: &http::response::Parts, body: &[u8]) -> bhttp::Message {
    let status = bhttp::StatusCode::try_from(parts.status.as_u16())
        .unwrap_or_else(|_| bhttp::StatusCode::try_from(502u16).expect("a status"));
    let mut m = bhttp::Message::response(status);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name.as_str().as_bytes()) {
            m.put_header(name.as_str(), value.as_bytes());
        }
    }
    m.write_content(body);
    m
}
