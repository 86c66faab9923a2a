//! Relay behaviour through the real binary: half-close, idle timeout, large transfers.

use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind, echo, read_line};
use gatehouse_tests::Gateway;
use gatehouse_tests::SIMULATED_TEE;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(idle: &str) -> (Gateway, u16) {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "echo");
    let config = format!(
        r#"
[proxy]
listen = ["127.0.0.1:0"]
base_domains = ["gw.test"]
allow_local_instances = true
workers = 1
[proxy.timeouts]
idle = "{idle}"
[proxy.custom_domains]
enabled = false
[[apps]]
id = "echo"
default_port = {port}
[[apps.instances]]
address = "127.0.0.1"
{SIMULATED_TEE}"#
    );
    (Gateway::start(&config), port)
}

/// A plain TCP "client" that has sent a valid hello for `echo-<port>s` (passthrough relays raw
/// bytes, so it needs no TLS); returns it and the hello's bytes.
async fn passthrough_client(gw: &Gateway, port: u16) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let hello = gatehouse::hello::parse::build::client_hello(
        Some(&format!("echo-{port}s.gw.test")),
        &[],
        0,
    );
    let first = gatehouse::hello::parse::build::records(&hello, 16_384);
    c.write_all(&first).await.unwrap();
    (c, first)
}

#[tokio::test]
async fn passthrough_half_close_then_response() {
    let (gw, port) = gateway("1m").await;
    let (mut c, first) = passthrough_client(&gw, port).await;
    c.write_all(b"after the hello").await.unwrap();
    c.shutdown().await.unwrap(); // FIN: the client has nothing more to send
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let expected = [
        b"echo\n".as_slice(),
        &first,
        b"after the hello",
        b"echo: bye\n",
    ]
    .concat();
    assert_eq!(
        all, expected,
        "echo of everything, then the app's reply after our FIN"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_active_ones_are_not() {
    let (gw, _) = gateway("2s").await;
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let hello = gatehouse::hello::parse::build::client_hello(Some("echos.gw.test"), &[], 0);
    c.write_all(&gatehouse::hello::parse::build::records(&hello, 16_384))
        .await
        .unwrap();
    assert_eq!(read_line(&mut c).await, "echo");
    let mut echoed = vec![0u8; hello.len() + 5];
    c.read_exact(&mut echoed).await.unwrap();
    // traffic every 300 ms for 3 s keeps it open past the 2 s idle limit (margin for a loaded CI)
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(format!("{i}\n").as_bytes()).await.unwrap();
        assert_eq!(read_line(&mut c).await, i.to_string());
    }
    // then silence: the gateway closes it (bounded wait, no timing assertion)
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
    assert!(rest.is_empty(), "no bytes after close: {rest:?}");
}

#[tokio::test]
async fn large_transfer_through_termination_is_intact() {
    let ca = TestCa::new();
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "echo");
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.write(dir.path(), "c", &["*.gw.test"]);
    let config = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\nbase_domains = [\"gw.test\"]\nallow_local_instances = true\n[proxy.custom_domains]\nenabled = false\n[[apps]]\nid = \"echo\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\ncertificates = [{cert}]\n{SIMULATED_TEE}"
    );
    let gw = Gateway::start_in(dir, &config);
    let tls = tls_connect(gw.addr, "echo.gw.test", ca.client(&[]))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut all = Vec::new();
    r.read_to_end(&mut all).await.unwrap();
    writer.await.unwrap();
    let expected = [b"echo\n".as_slice(), &data, b"echo: bye\n"].concat();
    assert_eq!(all.len(), expected.len());
    assert!(
        all == expected,
        "20 MB round trip through TLS termination is byte-exact"
    );
}

/// Passthrough splices bulk (`[proxy] splice`, on by default) and copies small messages; the
/// same bytes must arrive either way, with the half-close passed on.
#[tokio::test]
async fn splice_large_passthrough_transfer_is_intact() {
    let (gw, port) = gateway("1m").await;
    let (c, first) = passthrough_client(&gw, port).await;
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // small writes first (copied), then bulk (spliced), then small again
        for chunk in sent[..4096].chunks(100) {
            w.write_all(chunk).await.unwrap();
        }
        w.write_all(&sent[4096..sent.len() - 4096]).await.unwrap();
        for chunk in sent[sent.len() - 4096..].chunks(100) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut all = Vec::new();
    r.read_to_end(&mut all).await.unwrap();
    writer.await.unwrap();
    let expected = [b"echo\n".as_slice(), &first, &data, b"echo: bye\n"].concat();
    assert_eq!(all.len(), expected.len());
    assert!(
        all == expected,
        "20 MB round trip through passthrough is byte-exact"
    );
}
