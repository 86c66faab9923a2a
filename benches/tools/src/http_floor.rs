//! The HTTP mode's floor, a benchmark arm (benches/arms.py `floor-pingora`, `floor-hyper`; crate `gatehouse-bench-tools`):
//! what a TLS-terminating HTTP/1.1 (or h2) proxy costs on this stack before any gateway work.
//!
//! TLS is terminated as gatehouse terminates it (tokio-rustls on aws-lc-rs, TLS 1.3), one
//! route, `X-Forwarded-For` and `-Proto` set, the upstream connection kept alive; then either
//!
//! - `pingora`: Pingora's `HttpProxy` on gatehouse's own transport (`TlsIo`, writes held to
//!   the flush), with no hook but the peer (one `HttpPeer`, cloned) and no modules: what any
//!   gateway built on Pingora pays per request, or
//! - `hyper`: hyper's HTTP/1.1 server, and per client connection one hyper client connection
//!   to the origin, bound to it (no pool), or
//! - `hyper-h2`: hyper's h2 server (ALPN h2), and per client connection one hyper h2 client
//!   connection to the origin's h2c port, every stream of the one multiplexed on the other
//!   (the K2 rows' shape: h2 on both sides).
//!
//! Not a product: no routing, limits, timeouts or logs; one current-thread runtime and
//! mimalloc, as a gatehouse worker. Usage: `http_floor <pingora|hyper|hyper-h2> <listen> <origin> <chain.pem> <key.pem>`.

use async_trait::async_trait;
use gatehouse::hello::replay::Prefixed;
use gatehouse::http::io::TlsIo;
use http_body_util::BodyExt;
use pingora_core::apps::ServerApp;
use pingora_core::modules::http::HttpModules;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Pingora,
    Hyper,
    HyperH2,
}

/// Pingora with nothing but a fixed peer.
struct Floor {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _: &mut Session,
        _: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut pingora_http::RequestHeader,
        _: &mut (),
    ) -> pingora_error::Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        up.insert_header("x-forwarded-for", client.unwrap_or_default())?;
        up.insert_header("x-forwarded-proto", HTTPS)
    }
}

fn tls_config(chain: &str, key: &str, alpn: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(chain)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

async fn serve_pingora(
    proxy: Arc<pingora_proxy::HttpProxy<Floor>>,
    tls: gatehouse_tls::ServerTls<Prefixed<TcpStream>>,
    client: SocketAddr,
) {
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let mut stream: pingora_core::protocols::Stream = Box::new(TlsIo::new(tls, client));
    while let Some(s) = proxy.process_new(stream, &shutdown).await {
        stream = s;
    }
}

async fn serve_hyper(
    tls: gatehouse_tls::ServerTls<Prefixed<TcpStream>>,
    client: SocketAddr,
    origin: SocketAddr,
) -> anyhow::Result<()> {
    use hyper_util::rt::TokioIo;
    let up = TcpStream::connect(origin).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let xff = http::HeaderValue::from_str(&client.ip().to_string())?;
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let (sender, xff) = (sender.clone(), xff.clone());
            async move {
                req.headers_mut().insert("x-forwarded-for", xff);
                req.headers_mut().insert("x-forwarded-proto", HTTPS);
                let resp = sender.lock().await.send_request(req).await?;
                Ok::<_, hyper::Error>(resp.map(|b| b.boxed()))
            }
        });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

async fn serve_hyper_h2(
    tls: gatehouse_tls::ServerTls<Prefixed<TcpStream>>,
    client: SocketAddr,
    origin: SocketAddr,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = TcpStream::connect(origin).await?;
    up.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(up)).await?;
    tokio::spawn(conn);
    let xff = http::HeaderValue::from_str(&client.ip().to_string())?;
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let (mut sender, xff) = (sender.clone(), xff.clone());
            async move {
                req.headers_mut().insert("x-forwarded-for", xff);
                req.headers_mut().insert("x-forwarded-proto", HTTPS);
                let resp = sender.send_request(req).await?;
                Ok::<_, hyper::Error>(resp.map(|b| b.boxed()))
            }
        });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [engine, listen, origin, chain, key] = args.as_slice() else {
        anyhow::bail!(
            "usage: http_floor <pingora|hyper|hyper-h2> <listen> <origin> <chain.pem> <key.pem>"
        );
    };
    let (listen, origin): (SocketAddr, SocketAddr) = (listen.parse()?, origin.parse()?);
    let engine = match engine.as_str() {
        "hyper" => Engine::Hyper,
        "hyper-h2" => Engine::HyperH2,
        "pingora" => Engine::Pingora,
        other => anyhow::bail!("engine {other:?}: pingora, hyper or hyper-h2"),
    };
    let alpn: &[u8] = if engine == Engine::HyperH2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    let config = tls_config(chain, key, alpn)?;
    let mut peer = HttpPeer::new(origin, false, String::new());
    peer.options.idle_timeout = Some(std::time::Duration::from_secs(600));
    let conf = Arc::new(ServerConf::default());
    let proxy = Arc::new(pingora_proxy::http_proxy(&conf, Floor { peer }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (tcp, client) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let (config, proxy) = (config.clone(), proxy.clone());
            tokio::spawn(async move {
                let Ok(tls) =
                    gatehouse_tls::accept(config, Prefixed::new(tcp, Vec::new(), 0)).await
                else {
                    return;
                };
                match engine {
                    Engine::Hyper => drop(serve_hyper(tls, client, origin).await),
                    Engine::HyperH2 => drop(serve_hyper_h2(tls, client, origin).await),
                    Engine::Pingora => serve_pingora(proxy, tls, client).await,
                }
            });
        }
    })
}
