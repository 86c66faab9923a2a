//! The small hyper HTTP/1.1 servers around the proxy (admin, demo app, port-80 redirect, VPC
//! registration): one accept loop, plain or over TLS, with the same limits on every one.
//!
//! Some of these listen publicly (port 80, VPC registration) without authentication, so each
//! bounds what a client can hold: a connection cap (a client over it is closed at once, never
//! queued), a deadline for each request's header that also bounds the idle time between
//! keep-alive requests (hyper arms it when it starts reading a head), and a lifetime per
//! connection. The cap is at most an eighth of the process's descriptor limit, so the TLS
//! listener keeps descriptors even when every small server is full.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A plain response.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<Full<Bytes>> {
    let mut r = text(status, serde_json::to_vec_pretty(value).unwrap_or_default());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a JSON body of at most `limit` bytes; the error is the response to send (413, 400
/// naming what was expected).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
    expected: &str,
) -> Result<T, Response<Full<Bytes>>> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(text(413, format!("413 body: {e}\n"))),
    };
    serde_json::from_slice(&body).map_err(|e| text(400, format!("400 expected {expected}: {e}\n")))
}

/// What one client of a small server may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (further ones are closed at once); lowered to an eighth of
    /// the descriptor limit when that is smaller.
    pub max_connections: usize,
    /// A request's header must arrive within this, counted from when the server starts
    /// waiting for it (so it also bounds the idle time between keep-alive requests).
    pub header_read_timeout: Duration,
    /// A connection ends after this, whatever it is doing.
    pub max_lifetime: Duration,
    /// The TLS handshake (TLS servers only).
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `handler` on `listener` until the task is dropped; one task per connection.
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_with(listener, None, limits, handler).await
}

/// [`serve`] over TLS: each connection's handshake (bounded by the limits) runs in its own
/// task.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_with(listener, Some(tls), limits, handler).await
}

/// The connection cap in force: the configured one, at most an eighth of `RLIMIT_NOFILE`.
fn effective_cap(configured: usize) -> usize {
    let nofile = crate::fdlimit::current()
        .unwrap_or(u64::MAX)
        .min(usize::MAX as u64) as usize;
    configured.min(nofile / 8).max(1)
}

async fn serve_with<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(effective_cap(limits.max_connections)));
    let local = listener.local_addr().ok();
    let mut full_warned = None::<Instant>;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept on {local:?}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if full_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    "{local:?}: {} connections open, the cap: closing new ones",
                    effective_cap(limits.max_connections)
                );
                full_warned = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let served = tokio::time::timeout(limits.max_lifetime, async {
                match tls {
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                    Some(tls) => {
                        let shake =
                            tokio::time::timeout(limits.handshake_timeout, tls.accept(stream));
                        match shake.await {
                            Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), service).await,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake from {peer}: {e}");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake from {peer}: timed out");
                                Ok(())
                            }
                        }
                    }
                }
            });
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("http connection from {peer}: {e}"),
                Err(_) => tracing::debug!("http connection from {peer}: lifetime over"),
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS acceptor and a client config trusting it, for `reg.test`.
    pub(crate) fn tls_pair() -> (tokio_rustls::TlsAcceptor, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["reg.test".into()]).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            Arc::new(client),
        )
    }

    /// Issue 16 §3 for the TLS servers (the VPC registration listener is one): idle sockets
    /// over the cap are closed at once, the rest at the handshake or header deadline, and a
    /// real client is served afterwards.
    #[tokio::test]
    async fn hardening_tls_server_caps_and_closes_idle_connections() {
        let (acceptor, client) = tls_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 16,
            header_read_timeout: Duration::from_millis(400),
            max_lifetime: Duration::from_secs(30),
            handshake_timeout: Duration::from_millis(400),
        };
        tokio::spawn(serve_tls(listener, acceptor, limits, |_req, _peer| async {
            text(200, "ok")
        }));
        let started = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // A TLS client that finishes its handshake but never sends a request is closed too.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("reg.test").unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let mut silent = connector.connect(name.clone(), tcp).await;
        for s in &mut idle {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
            assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed: {n:?}");
        }
        if let Ok(s) = &mut silent {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
            assert!(
                matches!(n, Ok(Ok(0)) | Ok(Err(_))),
                "silent TLS closed: {n:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(idle);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: reg.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
    }
}
