//! The stream against rustls' own buffered client (through tokio-rustls), over in-memory
//! pipes: what a browser or curl sees must not change when the server side is ours.

use crate::{accept, pool, ServerTls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{
    duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf,
};
use tokio_rustls::client::TlsStream as ClientTls;

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki(versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]) -> Pki {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let mut server = rustls::ServerConfig::builder_with_protocol_versions(versions)
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

async fn connect(
    client: Arc<rustls::ClientConfig>,
    io: DuplexStream,
) -> io::Result<ClientTls<DuplexStream>> {
    let name = ServerName::try_from("app.test").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, io)
        .await
}

/// Both ends of a finished handshake.
async fn pair(pki: &Pki) -> (ClientTls<DuplexStream>, ServerTls<DuplexStream>) {
    let (c, s) = duplex(256 * 1024);
    let (client, server) = tokio::join!(
        connect(pki.client.clone(), c),
        accept(pki.server.clone(), s)
    );
    (client.unwrap(), server.unwrap())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes `data` in chunks of varying size, then shuts down.
async fn send_all<W: AsyncWrite + Unpin>(mut w: W, data: Vec<u8>) -> W {
    let mut at = 0;
    let mut size = 1;
    while at < data.len() {
        let end = data.len().min(at + size);
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
        size = size * 3 % 70_001 + 1;
    }
    w.shutdown().await.unwrap();
    w
}

#[tokio::test]
async fn tls_stream_carries_megabytes_both_ways_intact_over_tls13_and_tls12() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let pki = pki(&[version], &[]);
        let (client, server) = pair(&pki).await;
        let up = pattern(3_000_000);
        let down: Vec<u8> = pattern(2_000_000).into_iter().rev().collect();
        let (mut cr, cw) = tokio::io::split(client);
        let (mut sr, sw) = tokio::io::split(server);
        let (_, _, got_up, got_down) = tokio::join!(
            send_all(cw, up.clone()),
            send_all(sw, down.clone()),
            async {
                let mut got = Vec::new();
                sr.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.unwrap();
                got
            },
        );
        assert!(got_up == up, "client to server intact ({version:?})");
        assert!(got_down == down, "server to client intact ({version:?})");
    }
}

#[tokio::test]
async fn tls_stream_reports_the_negotiated_alpn_and_version() {
    let pki = pki(&[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let mut client = (*pki.client).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let pki = Pki {
        client: Arc::new(client),
        ..pki
    };
    let (_client, server) = pair(&pki).await;
    let session = server.get_ref().1;
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn tls_stream_failed_handshake_sends_the_alert() {
    let pki = pki(&[&rustls::version::TLS13], &[b"h2"]);
    let mut client = (*pki.client).clone();
    client.alpn_protocols = vec![b"imap".to_vec()];
    let (c, s) = duplex(64 * 1024);
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connect(Arc::new(client), c),
    );
    let (client, server) = tokio::join!(client, accept(pki.server.clone(), s));
    let server = server.expect_err("no common protocol");
    let client = client.expect("an alert, not silence");
    assert_eq!(server.kind(), io::ErrorKind::InvalidData);
    let client = client.expect_err("the client is refused").to_string();
    assert!(
        client.contains("NoApplicationProtocol"),
        "the client saw the alert: {client}"
    );
}

#[tokio::test]
async fn tls_stream_close_notify_is_a_clean_end_both_ways() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap(); // close_notify, then the write side's end
    let mut got = Vec::new();
    server
        .read_to_end(&mut got)
        .await
        .expect("a clean end, not an error");
    assert_eq!(got, b"last words");
    // The peer closed its side; ours still writes, then closes cleanly too.
    server.write_all(b"reply").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .expect("the client sees close_notify");
    assert_eq!(got, b"reply");
    assert!(
        server.write_all(b"more").await.is_err(),
        "no writes after close_notify"
    );
}

/// rustls reports the peer's close_notify once; a write may be the call that sees it (the
/// alert arrived behind data a read left waiting, as when both sides stream at once): the
/// next read is still a clean end, not a truncation.
#[tokio::test]
async fn tls_stream_close_notify_seen_by_a_write_is_still_a_clean_end() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap(); // close_notify right behind the data, then the end
    let mut five = [0u8; 5];
    server.read_exact(&mut five).await.unwrap();
    server.write_all(b"x").await.unwrap(); // takes in the waiting close_notify
    let mut rest = Vec::new();
    server
        .read_to_end(&mut rest)
        .await
        .expect("a clean end after the data");
    assert!(rest.is_empty());
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .expect("close_notify back");
    assert_eq!(got, b"x");
}

#[tokio::test]
async fn tls_stream_end_without_close_notify_is_unexpected_eof() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    client.write_all(b"cut").await.unwrap();
    client.flush().await.unwrap();
    let (io, _) = client.into_inner();
    drop(io); // the transport ends, no close_notify
    let mut got = Vec::new();
    let e = server
        .read_to_end(&mut got)
        .await
        .expect_err("truncation is reported");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(got, b"cut", "what arrived before the cut is delivered");
    let mut more = [0u8; 4];
    let again = server
        .read(&mut more)
        .await
        .expect_err("and stays reported");
    assert_eq!(again.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn tls_stream_answers_key_updates_and_keeps_carrying_data() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&[round; 100]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 100];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 100]);
        // Our reply goes out under the keys the client asked us to move to.
        server.write_all(&[round + 10; 50]).await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 50];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round + 10; 50]);
    }
}

#[tokio::test]
async fn tls_stream_a_corrupt_record_is_refused_with_an_alert() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (c, s) = duplex(64 * 1024);
    // The client's transport flips a bit in the first application record it writes.
    let c = Tap::new(c, Misbehave::FlipWrites { armed: false });
    let name = ServerName::try_from("app.test").unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let (client, server) = tokio::join!(connector.connect(name, c), accept(pki.server.clone(), s));
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    client.get_mut().0.misbehave = Misbehave::FlipWrites { armed: true };
    client.write_all(b"tampered").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let e = server
        .read(&mut buf)
        .await
        .expect_err("the record does not decrypt");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf));
    let seen = seen
        .await
        .expect("an alert, not silence")
        .expect_err("the client is told");
    let seen = seen.to_string();
    assert!(seen.contains("BadRecordMac"), "alert: {seen}");
    assert!(
        server.write_all(b"x").await.is_err(),
        "a broken session stays broken"
    );
}

#[tokio::test]
async fn tls_stream_records_arriving_a_few_bytes_at_a_time_and_tiny_reads() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (c, s) = duplex(64 * 1024);
    let (client, server) = tokio::join!(
        connect(pki.client.clone(), c),
        accept(pki.server.clone(), Tap::new(s, Misbehave::TrickleReads(0)))
    );
    let (client, mut server) = (client.unwrap(), server.unwrap());
    let data = pattern(200_000);
    let sender = tokio::spawn(send_all(client, data.clone()));
    let mut got = Vec::new();
    let mut small = [0u8; 10]; // smaller than any record: the rest waits in the stream
    loop {
        let n = server.read(&mut small).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&small[..n]);
    }
    assert!(
        got == data,
        "intact through partial records and small reads"
    );
    sender.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn tls_stream_idle_connection_holds_no_record_buffer() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let lent = pool::lent_on_this_thread();
    let (mut client, mut server) = pair(&pki).await;
    assert_eq!(pool::lent_on_this_thread(), lent, "after the handshake");
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                return server;
            }
            server.write_all(&buf[..n]).await.unwrap();
        }
    });
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    tokio::task::yield_now().await;
    assert_eq!(
        pool::lent_on_this_thread(),
        lent,
        "the idle server waits holding no buffer"
    );
    // Half a record, then silence: only those bytes are kept, in their own allocation.
    let mut record = [0u8; 5];
    record.copy_from_slice(&[23, 3, 3, 0, 40]);
    client.get_mut().0.write_all(&record).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        pool::lent_on_this_thread(),
        lent,
        "a partial record holds no pooled buffer"
    );
    drop(client);
    let _ = echo.await;
}

#[tokio::test]
async fn tls_stream_deferred_writes_wait_for_flush_then_leave_together() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    server.set_write_deferral(1460);
    server.write_all(b"header;").await.unwrap();
    server.write_all(b"body").await.unwrap();
    assert!(server.pending_output() > 0, "small writes wait");
    server.flush().await.unwrap();
    assert_eq!(server.pending_output(), 0, "a flush sends them");
    let mut got = [0u8; 11];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"header;body");
    // A drop that cannot wait can still send what waits: one application-data record.
    server.write_all(b"bye").await.unwrap();
    let mut sent = Vec::new();
    server.write_pending_with(|_io, bytes| {
        sent.extend_from_slice(bytes);
        Ok(bytes.len())
    });
    assert_eq!(server.pending_output(), 0);
    assert_eq!(sent[0], 23, "an application_data record");
    assert_eq!(
        sent.len(),
        5 + 3 + 1 + 16,
        "header, the 3 bytes, content type, tag"
    );
    // Past the threshold, writes leave at once.
    let big = pattern(4000);
    server.write_all(&big).await.unwrap();
    assert_eq!(
        server.pending_output(),
        0,
        "past the deferral, written without a flush"
    );
}

#[tokio::test]
async fn tls_stream_sends_tickets_so_the_next_handshake_resumes() {
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (mut client, mut server) = pair(&pki).await;
    assert_eq!(
        server.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    server.write_all(b"x").await.unwrap();
    server.flush().await.unwrap();
    let mut one = [0u8; 1];
    client.read_exact(&mut one).await.unwrap(); // takes the tickets sent before it
    let (_client, server) = pair(&pki).await;
    assert_eq!(
        server.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn tls_stream_handshake_completed_and_closed_in_one_flight_is_a_handshake() {
    // What a CA's TLS-ALPN-01 validation does: finish the handshake, close at once.
    let pki = pki(&[&rustls::version::TLS13], &[]);
    let (c, s) = duplex(64 * 1024);
    let c = Tap::new(
        c,
        Misbehave::Cork {
            writes: 0,
            held: Vec::new(),
        },
    );
    let client = async {
        let mut tls = connect_over(pki.client.clone(), c).await.unwrap();
        tls.shutdown().await.unwrap();
        tls
    };
    let (_client, server) = tokio::join!(client, accept(pki.server.clone(), s));
    let mut server = server.expect("the handshake completed before the close");
    let mut rest = Vec::new();
    server
        .read_to_end(&mut rest)
        .await
        .expect("then a clean end");
    assert!(rest.is_empty());
}

async fn connect_over<IO: AsyncRead + AsyncWrite + Unpin>(
    client: Arc<rustls::ClientConfig>,
    io: IO,
) -> io::Result<ClientTls<IO>> {
    let name = ServerName::try_from("app.test").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, io)
        .await
}

/// How a [`Tap`] bends its stream.
enum Misbehave {
    /// Once armed, flips one bit of each write's payload.
    FlipWrites { armed: bool },
    /// Reads return at most a few bytes: every record arrives in pieces.
    TrickleReads(usize),
    /// Passes the first write (a ClientHello) and holds every later one until shutdown, then
    /// sends them together: a client's Finished and close_notify in one read.
    Cork { writes: usize, held: Vec<u8> },
}

/// A transport between a TLS end and its pipe that misbehaves as told.
struct Tap {
    inner: DuplexStream,
    misbehave: Misbehave,
}

impl Tap {
    fn new(inner: DuplexStream, misbehave: Misbehave) -> Tap {
        Tap { inner, misbehave }
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Misbehave::TrickleReads(last) = &mut this.misbehave else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        *last = *last % 7 + 1;
        let mut small = vec![0u8; (*last).min(buf.remaining())];
        let mut small_buf = ReadBuf::new(&mut small);
        let r = Pin::new(&mut this.inner).poll_read(cx, &mut small_buf);
        buf.put_slice(small_buf.filled());
        r
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match &mut this.misbehave {
            Misbehave::FlipWrites { armed: true } if buf.len() > 8 => {
                let mut bytes = buf.to_vec();
                bytes[7] ^= 1;
                Pin::new(&mut this.inner).poll_write(cx, &bytes)
            }
            Misbehave::Cork { writes, held } => {
                *writes += 1;
                if *writes == 1 {
                    return Pin::new(&mut this.inner).poll_write(cx, buf);
                }
                held.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            _ => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Misbehave::Cork { held, .. } = &mut this.misbehave {
            while !held.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, held))?;
                held.drain(..n);
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
