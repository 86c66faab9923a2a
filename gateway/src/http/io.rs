//! Our terminated TLS stream as a Pingora transport (`pingora_core::protocols::IO`): rustls
//! stays in our terminate path; Pingora sees a plaintext-speaking stream that reports the
//! negotiated ALPN, TLS version and cipher, and the real client address (after the PROXY
//! header, if the listener takes one) through its socket digest.
//!
//! HTTP/1.1 connections also carry a [`HeaderDeadline`]: while it is armed (from the start of
//! the connection or the end of a response until the next request header is parsed), a read
//! past it fails with `TimedOut`, so a client that trickles a header byte by byte is closed.
//! Pingora's own read timeout is per read, which such a client never trips.
//!
//! Writes to a TLS client are encrypted at once but leave the socket on flush, or once
//! [`WRITE_DEFERRED_UP_TO`] bytes wait (the TLS stream's write deferral): a response's header
//! and a small body (Pingora writes them apart and flushes at the body's end) leave in one
//! `writev`, not two (the HTTP mode's profile: one loopback write costs as much as a
//! request's whole parse). nginx holds output
//! the same way (`postpone_output 1460`). Pingora flushes after 1xx, header-only responses,
//! each chunk of a chunked or close-delimited body and at every body's end; h2 flushes
//! after each batch of frames; so nothing waits past its response.

use crate::hello::replay::Prefixed;
use crate::upstream::health::now_ms;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use pingora_core::protocols::{SocketDigest, TimingDigest};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

type Tls = gatehouse_tls::ServerTls<Prefixed<TcpStream>>;

/// What a [`TlsIo`] reads and writes: a client's TLS stream, or the in-process end of a
/// request that arrived inside the encrypted channel (already decrypted in the TEE).
#[derive(Debug)]
enum Inner {
    Tls(Box<Tls>),
    Channel(tokio::io::DuplexStream),
}

macro_rules! inner_poll {
    ($self:expr, $cx:expr, $method:ident $(, $arg:expr)*) => {
        match &mut $self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).$method($cx $(, $arg)*),
            Inner::Channel(s) => Pin::new(s).$method($cx $(, $arg)*),
        }
    };
}

static NEXT_ID: AtomicI32 = AtomicI32::new(1);

/// Plaintext bytes a TLS client's writes may wait for a flush: about one segment.
pub const WRITE_DEFERRED_UP_TO: usize = 1460;

/// When the next request header must be complete ([`now_ms`] clock), or disarmed.
#[derive(Debug, Default)]
pub struct HeaderDeadline(AtomicU64);

impl HeaderDeadline {
    /// Arms it `limit` from now.
    pub fn arm(&self, limit: std::time::Duration) {
        let at = now_ms() + limit.as_millis() as u64;
        self.0.store(at.max(1), Ordering::Relaxed);
    }

    /// Disarms it (a header was parsed; the body and upgrades are not bounded by it).
    pub fn disarm(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// When it expires ([`now_ms`] clock), if armed.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&at| at != 0)
    }
}

/// The deadline of one connection and the timer that wakes its reader at it.
#[derive(Debug)]
struct Timer {
    deadline: Arc<HeaderDeadline>,
    /// The deadline `sleep` is set for.
    armed_at: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Timer {
    /// `Ready` once the armed deadline has passed; registers a wake-up at it otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.deadline.get() else {
            return Poll::Pending;
        };
        let now = now_ms();
        if now >= at {
            return Poll::Ready(());
        }
        if self.armed_at != at {
            let when = tokio::time::Instant::now() + std::time::Duration::from_millis(at - now);
            self.sleep.as_mut().reset(when);
            self.armed_at = at;
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// A terminated client connection handed to Pingora.
#[derive(Debug)]
pub struct TlsIo {
    inner: Inner,
    id: UniqueIDType,
    socket: Arc<SocketDigest>,
    ssl: Arc<SslDigest>,
    alpn: Option<ALPN>,
    header_timer: Option<Timer>,
}

impl TlsIo {
    /// Wraps `inner`, whose client is `client` (the PROXY header's source, or the peer).
    pub fn new(mut inner: Tls, client: SocketAddr) -> TlsIo {
        inner.set_write_deferral(WRITE_DEFERRED_UP_TO);
        let (tcp, session) = inner.get_ref();
        let socket = SocketDigest::from_raw_fd(tcp.get_ref().as_raw_fd());
        let _ = socket.peer_addr.set(Some(PingoraAddr::Inet(client)));
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        TlsIo {
            inner: Inner::Tls(Box::new(inner)),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            socket: Arc::new(socket),
            ssl: Arc::new(SslDigest::new(cipher, version, None, None, Vec::new())),
            alpn,
            header_timer: None,
        }
    }

    /// The in-process end of one request opened from the encrypted channel, for `client`
    /// (the outer connection's client): HTTP/1.1, reported as TLS 1.3 as the outer hop was.
    pub fn channel(inner: tokio::io::DuplexStream, client: SocketAddr) -> TlsIo {
        let socket = SocketDigest::from_raw_fd(-1);
        let _ = socket.peer_addr.set(Some(PingoraAddr::Inet(client)));
        TlsIo {
            inner: Inner::Channel(inner),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            socket: Arc::new(socket),
            ssl: Arc::new(SslDigest::new("ohttp", "TLSv1.3", None, None, Vec::new())),
            alpn: Some(ALPN::H1),
            header_timer: None,
        }
    }

    /// Whether the client chose h2 by ALPN.
    pub fn is_h2(&self) -> bool {
        self.alpn == Some(ALPN::H2)
    }

    /// Bounds header reads by `deadline` (HTTP/1.1 only: h2 multiplexes requests).
    pub fn set_header_deadline(&mut self, deadline: Arc<HeaderDeadline>) {
        self.header_timer = Some(Timer {
            deadline,
            armed_at: 0,
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
        });
    }

    /// The socket digest: unique per live connection (its address keys [`super::Conns`]).
    pub fn socket_digest(&self) -> &Arc<SocketDigest> {
        &self.socket
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(timer) = &mut self.header_timer {
            if timer.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request header not complete within proxy.http.header_read_timeout",
                )));
            }
        }
        inner_poll!(self, cx, poll_read, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        inner_poll!(self, cx, poll_write, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        inner_poll!(self, cx, poll_flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        inner_poll!(self, cx, poll_shutdown)
    }
}

impl Drop for TlsIo {
    /// Sends what waits for a flush that will not come: Pingora drops a connection whose
    /// upstream broke mid-response without flushing it, and the client must still see the
    /// header and the bytes that arrived (then the cut), as it did before writes waited.
    /// Best effort, never blocking (`try_write`): a full socket buffer keeps the rest.
    fn drop(&mut self) {
        if let Inner::Tls(tls) = &mut self.inner {
            tls.write_pending_with(|io, bytes| io.get_ref().try_write(bytes));
        }
    }
}

#[async_trait::async_trait]
impl Shutdown for TlsIo {
    async fn shutdown(&mut self) {
        let _ = match &mut self.inner {
            Inner::Tls(s) => AsyncWriteExt::shutdown(s.as_mut()).await,
            Inner::Channel(s) => AsyncWriteExt::shutdown(s).await,
        };
    }
}

impl UniqueID for TlsIo {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for TlsIo {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.ssl.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for TlsIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket.clone())
    }
}

#[async_trait::async_trait]
impl Peek for TlsIo {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;
    use tokio::io::AsyncReadExt;

    /// Whether bytes wait in `tcp`'s receive queue (a loopback write lands there before the
    /// sender's call returns).
    fn bytes_waiting(tcp: &TcpStream) -> bool {
        let mut b = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(tcp).peek(&mut b) {
            Ok(n) => n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek: {e}"),
        }
    }

    /// A TLS client and the server's end of its connection as a [`TlsIo`], after one
    /// exchange (so that the session tickets sent after the handshake are read).
    async fn connected() -> (tokio_rustls::client::TlsStream<TcpStream>, TlsIo) {
        let (acceptor, client) = crate::http_server::tests::tls_pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("reg.test").unwrap();
            tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, peer) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls =
                gatehouse_tls::accept(acceptor.config().clone(), Prefixed::new(tcp, Vec::new(), 0))
                    .await
                    .unwrap();
            TlsIo::new(tls, peer)
        };
        let (mut client, mut io) = tokio::join!(connect, accept);
        io.write_all(b"ready").await.unwrap();
        io.flush().await.unwrap();
        let mut ready = [0u8; 5];
        client.read_exact(&mut ready).await.unwrap();
        assert!(!bytes_waiting(client.get_ref().0));
        (client, io)
    }

    /// Issue 22 (the HTTP mode's writes): a response header and a small body, written apart
    /// as Pingora writes them, stay in the TLS session until the flush, which sends both in
    /// one `writev`; a write past [`WRITE_DEFERRED_UP_TO`] leaves without a flush; a shutdown
    /// sends what is held; the client reads every byte.
    #[tokio::test]
    async fn http_speed_a_header_and_a_small_body_leave_together_at_the_flush() {
        let (mut client, mut io) = connected().await;
        let header = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n";
        io.write_all(header).await.unwrap();
        io.write_all(&[b'x'; 1024]).await.unwrap();
        assert!(
            !bytes_waiting(client.get_ref().0),
            "header and body are held until the flush"
        );
        io.flush().await.unwrap();
        let mut got = vec![0u8; header.len() + 1024];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..header.len()], header);
        assert!(got[header.len()..].iter().all(|&b| b == b'x'));

        io.write_all(&[b'y'; 8192]).await.unwrap();
        let mut bulk = vec![0u8; 8192];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut bulk),
        );
        read.await.expect("a large write leaves unflushed").unwrap();
        assert!(bulk.iter().all(|&b| b == b'y'));

        io.write_all(b"last").await.unwrap();
        AsyncWriteExt::shutdown(&mut io).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }

    /// What waits for a flush still leaves when the connection is dropped without one
    /// (Pingora's path when the upstream breaks mid-response): the client sees the header
    /// and the bytes that came, then the end.
    #[tokio::test]
    async fn http_speed_held_bytes_leave_when_the_connection_is_dropped() {
        let (mut client, mut io) = connected().await;
        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\nfirst part";
        io.write_all(partial).await.unwrap();
        assert!(!bytes_waiting(client.get_ref().0));
        drop(io);
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await; // no close_notify: an error at the end
        assert_eq!(got, partial);
    }
}
