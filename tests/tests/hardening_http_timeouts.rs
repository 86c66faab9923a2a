//! Issue 16 §4 through the real binary: connections to `mode = "http"` apps cannot hold their
//! slot forever. An h2 client that sends only the preface and SETTINGS is closed at the header
//! deadline; an h2 connection with no open stream, and an HTTP/1.1 keep-alive connection
//! between requests, are closed after the shorter of the header timeout and `timeouts.idle`,
//! counted from the last response (not from the connection's start); an h2 connection is told
//! GOAWAY before it is closed.

use gatehouse_tests::http::{body, http_app, request, request_h2, HttpGateway};
use gatehouse_tests::servers::{bind, http_whoami};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header deadline 1 s, idle 2 s.
async fn gateway() -> HttpGateway {
    let origin = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = origin.local_addr().unwrap().port();
    http_whoami(origin, "origin");
    HttpGateway::start_edited(
        "[proxy.http]\nheader_read_timeout = \"1s\"\n",
        &http_app("web", port, &["127.0.0.1"], ""),
        |c| c.replace("[proxy.timeouts]\n", "[proxy.timeouts]\nidle = \"2s\"\n"),
    )
}

/// Waits (at most `limit`) for the server to close `tls`; how long it took and what it sent.
async fn closed_within(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: Duration,
) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at((start + limit).into(), tls.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (start.elapsed(), seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]), // SETTINGS, GOAWAY...
        }
    }
}

/// The types of the h2 frames in `bytes` (a server's side after the preface).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_h2_without_headers_is_closed_at_the_header_deadline() {
    let s = gateway().await;
    let mut tls = s.tls("web.gw.test", &["h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
    tls.flush().await.unwrap();
    let (took, sent) = closed_within(&mut tls, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(800),
        "not before the deadline: {took:?}"
    );
    // GOAWAY (type 7) first: a client whose request crossed the close knows it was not served.
    assert!(
        frame_types(&sent).contains(&7),
        "no GOAWAY before the close: frame types {:?}",
        frame_types(&sent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_idle_h2_and_h1_connections_are_closed() {
    let s = gateway().await;
    // h2: one request, then no open stream: closed after the idle timeout.
    let tls = s.tls("web.gw.test", &["h2"]).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    // The request comes 0.6 s in: the connection's first header deadline (1 s from its start)
    // must be disarmed by it, so the close comes a full idle period after the response.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = send
        .send_request(
            request_h2("GET", "web.gw.test", "/")
                .body(body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), driver)
        .await
        .expect("the idle h2 connection is closed")
        .unwrap()
        .ok();
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "closed {:?} after the response: the header deadline was not disarmed",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "closed {:?} after the response: the wait is the shorter of the header timeout (1 s) \
         and idle (2 s)",
        start.elapsed()
    );

    // HTTP/1.1 keep-alive: one request, then idle: closed.
    let tls = s.tls("web.gw.test", &["http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let resp = send
        .send_request(request("GET", "web.gw.test", "/").body(body("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(Duration::from_secs(15), driver)
        .await
        .expect("the idle HTTP/1.1 connection is closed")
        .unwrap()
        .ok();
}
