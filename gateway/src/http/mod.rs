//! `mode = "http"`: an L7 reverse proxy on Pingora behind our terminate path.
//!
//! One [`HttpEngine`] per process holds one `HttpProxy` (one upstream connection pool shared
//! by every worker). The terminate path hands it each TLS stream of an `http` app, wrapped as
//! a Pingora transport ([`io::TlsIo`]); Pingora speaks HTTP/1.1 or h2 (the client's ALPN) and
//! calls [`proxy::Gatehouse`] for each request. The connection's route and SNI reach those
//! per-request hooks through [`Conns`], keyed by the connection's socket digest (the one
//! per-connection object Pingora hands back to every request, h1 and h2 alike).
//! [`stats`] holds the per-app request statistics, [`redirect`] the port-80 listener.

pub mod channel;
pub mod hyper_path;
pub mod io;
pub mod proxy;
pub mod redirect;
pub mod stats;

use crate::route::Route;
use gatehouse_config::HttpConfig;
use io::HeaderDeadline;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the per-request hooks need to know about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The route its SNI chose.
    pub route: Route,
    /// The SNI (lower case).
    pub sni: Arc<str>,
    /// The header deadline: on HTTP/1.1 re-armed after each response (it bounds the idle
    /// time between requests too); on h2 armed once, until the first request's HEADERS
    /// (then the h2 idle timeout takes over).
    pub header_deadline: Arc<HeaderDeadline>,
    /// How long after a response an HTTP/1.1 connection may wait for the next header
    /// (`None` on h2).
    pub rearm_after_response: Option<std::time::Duration>,
    /// This hop's forwarding values, made once per connection.
    pub forwarded: Arc<proxy::Forwarded>,
    /// Whether this is the in-process connection of a request opened from the encrypted
    /// channel (its instance is told so by `gatehouse-channel: ohttp`).
    pub channel: bool,
}

type Digest = Arc<pingora_core::protocols::SocketDigest>;

/// Live `http` connections by socket digest. An entry holds its digest, so the digest's
/// address (the key) cannot be reused by another connection while the entry exists, and a
/// lookup or removal matches the digest itself, not only its address.
#[derive(Debug, Default)]
pub struct Conns(Mutex<HashMap<usize, (Digest, ConnInfo)>>);

impl Conns {
    fn key(d: &Digest) -> usize {
        Arc::as_ptr(d) as usize
    }

    /// The connection a request came on.
    pub fn get(&self, d: &Digest) -> Option<ConnInfo> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&Conns::key(d))
            .filter(|(held, _)| Arc::ptr_eq(held, d))
            .map(|(_, info)| info.clone())
    }

    /// Registers the connection of digest `d` until the returned guard drops.
    fn register(&self, d: &Digest, info: ConnInfo) -> Registered<'_> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Conns::key(d), (d.clone(), info));
        Registered(self, d.clone())
    }
}

/// Removes a connection from [`Conns`] when its processing ends: its own entry only.
struct Registered<'a>(&'a Conns, Digest);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        let key = Conns::key(&self.1);
        if m.get(&key)
            .is_some_and(|(held, _)| Arc::ptr_eq(held, &self.1))
        {
            m.remove(&key);
        }
    }
}

/// Pingora's own timer store serves timeouts up to this long (its entries live until they
/// would fire, completed or not); longer ones are tokio timers, freed with their read.
pub const FAST_TIMERS_UP_TO: std::time::Duration = std::time::Duration::from_secs(2);

/// The process's HTTP proxy.
pub struct HttpEngine {
    proxy: Arc<HttpProxy<proxy::Gatehouse>>,
    /// The hyper path (HTTP/1.1 and h2); `None` where Pingora serves every request
    /// (`min_send_rate` is Pingora's).
    hyper_path: Option<Arc<hyper_path::HyperPath>>,
    conns: Arc<Conns>,
    header_read_timeout: std::time::Duration,
    idle: std::time::Duration,
    /// Pingora's shutdown flag (never set: our workers drain and drop connections themselves).
    shutdown: watch::Receiver<bool>,
    _shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for HttpEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpEngine")
    }
}

impl HttpEngine {
    /// The engine under the data path's `timeouts` (`connect` to instances; `idle`: an h2
    /// connection with no open stream and an HTTP/1.1 one between requests are closed after
    /// the shorter of it and the header timeout, and a request body read or instance write that makes
    /// no progress that long ends the request; `write`: a response the client does not read
    /// for that long ends, freeing its instance connection) and the `[proxy.http]` settings.
    ///
    /// `shared` is the process state the engine is part of (the attestation bundle is
    /// answered from it on every `http` app's names).
    pub fn new(
        timeouts: &gatehouse_config::Timeouts,
        config: &HttpConfig,
        shared: std::sync::Weak<crate::conn::Shared>,
    ) -> HttpEngine {
        let idle = timeouts.idle;
        let conns = Arc::new(Conns::default());
        let conf = Arc::new(ServerConf {
            upstream_keepalive_pool_size: config.upstream_pool_size,
            ..ServerConf::default()
        });
        let app = proxy::Gatehouse::new(conns.clone(), timeouts, config.clone(), shared.clone());
        let (tx, rx) = watch::channel(false);
        let mut proxy = pingora_proxy::http_proxy(&conf, app);
        let mut options = HttpServerOptions::default();
        // An h2 connection with no open stream waits for its next request as long as an
        // HTTP/1.1 one does (the shorter of the header timeout and `idle`). Not `idle` alone:
        // Pingora's idle timer is a `pingora_timeout` sleep, kept in a per-thread tree in
        // 10 ms buckets until it expires even when the connection got a stream long before,
        // so a 10-minute idle kept up to 60,000 of them per thread under steady h2 traffic
        // (the soak's +5 MB in 4 minutes, not back after the load; with 30 s: +2 MB, back).
        options.h2_idle_timeout = Some(config.header_read_timeout.min(idle));
        // The same store holds every read and write timeout Pingora sets while a future is
        // pending (each read of a request body or WebSocket frame waits under `idle`), each
        // until it would have fired: the soak's WebSocket sessions kept 6 MB after the load.
        // Past a few seconds, tokio's timers, which go when the read completes.
        pingora_timeout::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(FAST_TIMERS_UP_TO));
        proxy.server_options = Some(options);
        HttpEngine {
            proxy: Arc::new(proxy),
            hyper_path: (config.min_send_rate == 0)
                .then(|| Arc::new(hyper_path::HyperPath::new(timeouts, config, shared))),
            conns,
            header_read_timeout: config.header_read_timeout,
            idle,
            shutdown: rx,
            _shutdown_tx: tx,
        }
    }

    /// Serves one terminated connection to its end.
    pub async fn serve(
        &self,
        tls: gatehouse_tls::ServerTls<crate::hello::replay::Prefixed<tokio::net::TcpStream>>,
        client: SocketAddr,
        route: Route,
        sni: Arc<str>,
    ) {
        if let Some(path) = &self.hyper_path {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let forwarded = Arc::new(proxy::Forwarded::new(client, &sni));
            let info = ConnInfo {
                route,
                sni,
                header_deadline: Arc::default(),
                // HTTP/1.1: between requests; h2: while no stream is open.
                rearm_after_response: Some(self.header_read_timeout.min(self.idle)),
                forwarded,
                channel: false,
            };
            return path.serve(tls, info, client, h2).await;
        }
        let mut io = io::TlsIo::new(tls, client);
        let header_deadline = Arc::new(HeaderDeadline::default());
        header_deadline.arm(self.header_read_timeout);
        io.set_header_deadline(header_deadline.clone());
        let rearm_after_response = (!io.is_h2()).then(|| self.header_read_timeout.min(self.idle));
        let forwarded = Arc::new(proxy::Forwarded::new(client, &sni));
        let info = ConnInfo {
            route,
            sni,
            header_deadline,
            rearm_after_response,
            forwarded,
            channel: false,
        };
        let _registered = self.conns.register(io.socket_digest(), info);
        let mut stream: pingora_core::protocols::Stream = Box::new(io);
        // h1 keep-alive: Pingora hands the stream back after each request it can reuse.
        while let Some(s) = self.proxy.process_new(stream, &self.shutdown).await {
            stream = s;
        }
    }

    /// Serves `request`, opened from the encrypted channel on a connection described by
    /// `info`, through this proxy on an in-process connection of its own (so every check,
    /// header and log of a plain request applies), and returns the response as Binary HTTP,
    /// its body read whole up to `max_response` bytes.
    pub async fn inner(
        &self,
        info: ConnInfo,
        client: SocketAddr,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
        max_response: u64,
    ) -> Result<bhttp::Message, String> {
        let (parts, body) = self.exchange(info, client, request, max_response).await?;
        Ok(channel::outer_response(&parts, &body))
    }

    /// Serves `request` on a connection described by `info` through the Pingora path, on an
    /// in-process connection of its own, and returns the response, its body read whole up to
    /// `max_response` bytes.
    pub async fn exchange(
        &self,
        info: ConnInfo,
        client: SocketAddr,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
        max_response: u64,
    ) -> Result<(http::response::Parts, bytes::Bytes), String> {
        use http_body_util::BodyExt;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let io = io::TlsIo::channel(theirs, client);
        let header_deadline = Arc::new(HeaderDeadline::default());
        let info = ConnInfo {
            header_deadline,
            rearm_after_response: None,
            ..info
        };
        let registered = self.conns.register(io.socket_digest(), info);
        let serve = async move {
            let _registered = registered;
            let mut stream: pingora_core::protocols::Stream = Box::new(io);
            while let Some(s) = self.proxy.process_new(stream, &self.shutdown).await {
                stream = s;
            }
        };
        let ask = async move {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(ours))
                    .await
                    .map_err(|e| format!("the inner connection: {e}"))?;
            let exchange = async move {
                let resp = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("the inner request: {e}"))?;
                let (parts, body) = resp.into_parts();
                let body = http_body_util::Limited::new(body, max_response as usize)
                    .collect()
                    .await
                    .map_err(|e| {
                        format!("the response body (proxy.http.channel.max_response is {max_response} bytes): {e}")
                    })?
                    .to_bytes();
                Ok::<_, String>((parts, body))
            };
            let (answer, _) = tokio::join!(exchange, conn);
            answer
        };
        let ((), answer) = tokio::join!(serve, ask);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{AppSpec, Mode, RouteTable};
    use pingora_core::protocols::SocketDigest;

    fn info(sni: &str) -> ConnInfo {
        let table = RouteTable::build(
            &["gw.test".into()],
            vec![AppSpec::new("web", 80, Vec::new())],
            None,
        )
        .unwrap();
        ConnInfo {
            route: table.route("web", None, Mode::Terminate).unwrap(),
            sni: sni.into(),
            header_deadline: Arc::default(),
            rearm_after_response: None,
            forwarded: Arc::new(proxy::Forwarded::new("192.0.2.1:1".parse().unwrap(), sni)),
            channel: false,
        }
    }

    #[test]
    fn soak_long_pingora_timeouts_are_timers_freed_with_their_read() {
        let _engine = HttpEngine::new(
            &gatehouse_config::Timeouts::default(),
            &HttpConfig::default(),
            std::sync::Weak::new(),
        );
        assert_eq!(
            pingora_timeout::fast_timeout::fast_timeout_to_tokio_threshold(),
            Some(FAST_TIMERS_UP_TO),
            "a 10-minute body read timeout must not be kept in Pingora's store until it fires"
        );
    }

    #[test]
    fn exposure_connection_state_is_keyed_by_identity_not_address() {
        let conns = Conns::default();
        let old: Digest = Arc::new(SocketDigest::from_raw_fd(7));
        let new: Digest = Arc::new(SocketDigest::from_raw_fd(8));
        let stale = conns.register(&old, info("old.gw.test"));
        // A new connection registered under the same key (as if the old digest's address
        // were reused) is not served the old one's state, and the old guard does not remove it.
        let key = Conns::key(&old);
        conns
            .0
            .lock()
            .unwrap()
            .insert(key, (new.clone(), info("new.gw.test")));
        assert!(
            conns.get(&old).is_none(),
            "a lookup matches the digest itself"
        );
        drop(stale);
        let m = conns.0.lock().unwrap();
        assert_eq!(&*m.get(&key).expect("kept").1.sni, "new.gw.test");
        drop(m);
        // While registered, the entry holds its digest: its address cannot be reused.
        let before = Arc::strong_count(&new);
        let _live = conns.register(&new, info("live.gw.test"));
        assert_eq!(
            Arc::strong_count(&new),
            before + 2,
            "the entry and its guard"
        );
        assert_eq!(&*conns.get(&new).unwrap().sni, "live.gw.test");
    }
}
