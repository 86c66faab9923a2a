//! ClientHello handling through the real binary: fragmented hellos complete a real handshake;
//! bad first bytes get an alert (where one applies), are counted, and never crash the gateway.

use gatehouse_tests::pki::TestCa;
use gatehouse_tests::servers::{bind, echo};
use gatehouse_tests::{base_config, Gateway};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(ca: &TestCa) -> Gateway {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "web");
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.write(dir.path(), "c", &["*.gw.test"]);
    let config = format!(
        "{}\n[[apps]]\nid = \"web\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\ncertificates = [{cert}]\n",
        base_config("")
    );
    Gateway::start_in(dir, &config)
}

/// A real rustls client whose hello is re-framed into two TLS records and written one byte
/// per TCP segment; the handshake must then complete and data must flow.
/// (Multi-threaded: the second half blocks on std I/O while the echo server runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_split_across_two_records_delivered_byte_by_byte() {
    let ca = TestCa::new();
    let gw = gateway(&ca).await;
    let name = ServerName::try_from("web.gw.test").unwrap();
    let mut conn = rustls::ClientConnection::new(ca.client(&["http/1.1"]), name).unwrap();
    let mut first = Vec::new();
    conn.write_tls(&mut first).unwrap();
    assert_eq!(first[0], 22);
    let payload = &first[5..];
    assert!(payload.len() > 200, "a real hello: {} bytes", payload.len());
    let mid = payload.len() / 2;
    let mut reframed = Vec::new();
    for part in [&payload[..mid], &payload[mid..]] {
        reframed.extend([22, 3, 1]);
        reframed.extend((part.len() as u16).to_be_bytes());
        reframed.extend(part);
    }
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for b in &reframed {
        tcp.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // finish the handshake with rustls' own state machine over the socket
    let mut tcp = tcp.into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        } else {
            conn.read_tls(&mut tcp).unwrap();
            conn.process_new_packets().unwrap();
        }
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    stream.write_all(b"split ok\n").unwrap();
    let mut got = vec![0u8; "web\nsplit ok\n".len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, b"web\nsplit ok\n");
}

/// Sends `bytes`, then reads until the gateway closes; returns what it sent back.
async fn send_and_collect(gw: &Gateway, bytes: &[u8], then_close: bool) -> Vec<u8> {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    if then_close {
        let _ = tcp.shutdown().await;
    }
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut back)).await;
    assert!(r.is_ok(), "gateway did not close the connection");
    back
}

fn alert(description: u8) -> Vec<u8> {
    vec![0x15, 3, 3, 0, 2, 2, description]
}

#[tokio::test]
async fn bad_first_bytes_are_refused_counted_and_survived() {
    use gatehouse::hello::parse::build::{client_hello, records};
    let ca = TestCa::new();
    let gw = gateway(&ca).await;
    // plain HTTP: no TLS alert (it would be noise to an HTTP client), just close
    assert_eq!(
        send_and_collect(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await,
        b""
    );
    // no SNI: handshake_failure
    assert_eq!(
        send_and_collect(&gw, &records(&client_hello(None, &[], 0), 16_384), false).await,
        alert(40)
    );
    // malformed: a hello whose inner lengths lie -> decode_error
    let mut bad = client_hello(Some("web.gw.test"), &[], 0);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    bad[40] = 0xff; // session id length 255
    assert_eq!(
        send_and_collect(&gw, &records(&bad, 16_384), false).await,
        alert(50)
    );
    // oversized: a hello announcing 20 KB, sent in full records -> decode_error at the 16 KiB bound
    let huge = client_hello(Some("web.gw.test"), &[], 20_000);
    assert_eq!(
        send_and_collect(&gw, &records(&huge, 16_000), false).await,
        alert(50)
    );
    // truncated: half a hello then FIN -> closed without alert
    let half = records(&client_hello(Some("web.gw.test"), &[], 0), 16_384);
    assert_eq!(
        send_and_collect(&gw, &half[..half.len() / 2], true).await,
        b""
    );
    // an unknown app with a valid hello: unrecognized_name
    assert_eq!(
        send_and_collect(
            &gw,
            &records(&client_hello(Some("zzz.gw.test"), &[], 0), 16_384),
            false
        )
        .await,
        alert(112)
    );
    for (reason, n) in [
        ("not_tls", 1),
        ("no_sni", 1),
        ("malformed_hello", 1),
        ("hello_too_large", 1),
        ("truncated", 1),
        ("no_route", 1),
    ] {
        let series = format!("gatehouse_connections_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(gw.wait_metric(&series, n), n, "{series}");
    }
    // and the gateway still serves
    let tls = gatehouse_tests::pki::tls_connect(gw.addr, "web.gw.test", ca.client(&[])).await;
    assert!(tls.is_ok());
}

#[tokio::test]
async fn slow_hello_hits_the_handshake_timeout() {
    let ca = TestCa::new();
    let gw = gateway(&ca).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&[22, 3, 1]).await.unwrap(); // then nothing
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut back)).await;
    assert!(r.is_ok(), "not closed after the handshake timeout");
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"handshake_timeout\"}",
            1
        ),
        1
    );
}
