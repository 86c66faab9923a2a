//! A TLS-intercepting proxy, as a company's inspection box or a CDN would sit between a
//! browser and the gateway: it terminates the browser's TLS with a certificate from its own CA
//! (which the test's browser trusts), opens its own TLS to the gateway for the same name, and
//! records every request and response in clear (HTTP/1.1 only, so the recording is the bytes
//! as sent). With `swap_channel_key` set it also replaces the encrypted channel's key in every
//! attestation bundle it relays with one of its own making: the attack a verifier must catch.

use crate::pki::{tls_connect, TestCa};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running interceptor.
pub struct Interceptor {
    /// Where browsers connect (map the names here).
    pub addr: SocketAddr,
    /// Everything relayed, in clear, both directions.
    pub recording: Arc<Mutex<Vec<u8>>>,
    /// Replace the channel key in relayed bundles.
    pub swap_channel_key: Arc<AtomicBool>,
}

impl Interceptor {
    /// Starts one in front of `upstream` (trusted through `upstream_tls`), presenting
    /// certificates from `ca` for `names`.
    pub async fn start(
        upstream: SocketAddr,
        upstream_tls: Arc<rustls::ClientConfig>,
        ca: &TestCa,
        names: &[&str],
    ) -> Interceptor {
        let issued = ca.issue(names);
        let mut server = (*ca.server(&issued)).clone();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Interceptor {
            addr: listener.local_addr().unwrap(),
            recording: Arc::default(),
            swap_channel_key: Arc::default(),
        };
        let (recording, swap) = (me.recording.clone(), me.swap_channel_key.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, upstream_tls) = (acceptor.clone(), upstream_tls.clone());
                let (recording, swap) = (recording.clone(), swap.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (sni, upstream_tls) = (sni.clone(), upstream_tls.clone());
                            let (recording, swap) = (recording.clone(), swap.clone());
                            async move {
                                relay(req, upstream, &sni, upstream_tls, &recording, &swap).await
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        me
    }

    /// Whether `needle` appears anywhere in what was relayed.
    pub fn saw(&self, needle: &str) -> bool {
        let r = self.recording.lock().unwrap();
        r.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

fn record(recording: &Mutex<Vec<u8>>, head: String, body: &[u8]) {
    let mut r = recording.lock().unwrap();
    r.extend_from_slice(head.as_bytes());
    r.extend_from_slice(body);
    r.extend_from_slice(b"\n\n");
}

async fn relay(
    req: hyper::Request<Incoming>,
    upstream: SocketAddr,
    sni: &str,
    upstream_tls: Arc<rustls::ClientConfig>,
    recording: &Mutex<Vec<u8>>,
    swap: &AtomicBool,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    record(
        recording,
        format!("> {} {} {:?}\n", parts.method, parts.uri, parts.headers),
        &body,
    );
    let bad = |why: String| {
        Ok(hyper::Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(why)))
            .unwrap())
    };
    let tls = match tls_connect(upstream, sni, upstream_tls).await {
        Ok(t) => t,
        Err(e) => return bad(format!("interceptor: {e}")),
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
    else {
        return bad("interceptor: handshake".into());
    };
    tokio::spawn(conn);
    let path = parts.uri.path().to_owned();
    let forwarded = hyper::Request::from_parts(parts, Full::new(body));
    let resp = match send.send_request(forwarded).await {
        Ok(r) => r,
        Err(e) => return bad(format!("interceptor: {e}")),
    };
    let (mut parts, body) = resp.into_parts();
    let mut body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if swap.load(Ordering::Relaxed) && path == "/.well-known/gatehouse/attestation" {
        if let Some(swapped) = swap_key(&body) {
            body = swapped;
        }
    }
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    record(
        recording,
        format!("< {} {:?}\n", parts.status, parts.headers),
        &body,
    );
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

/// The bundle with the first channel key's public key changed: a key the interceptor could
/// hold, which the quote does not bind.
fn swap_key(bundle: &[u8]) -> Option<Bytes> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Value = serde_json::from_slice(bundle).ok()?;
    let keys = v["claims"]["channel"]["ohttp_keys"].as_str()?;
    let mut list = b64.decode(keys).ok()?;
    // 2-byte length, key id, KEM id (2), then the public key.
    *list.get_mut(5)? ^= 0x55;
    v["claims"]["channel"]["ohttp_keys"] = b64.encode(list).into();
    Some(Bytes::from(v.to_string()))
}
