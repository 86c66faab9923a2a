//! Passthrough (`s`): the gateway relays TLS bytes untouched; the app terminates.

use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind, capture_prefix, read_line, tls_sni_echo};
use gatehouse_tests::{base_config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn passthrough_reaches_the_app_with_its_own_sni() {
    let ca = TestCa::new();
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    let name = format!("secure-{port}s.gw.test");
    // The app's own certificate: the gateway holds no certificate for this name at all.
    let issued = ca.issue(&[&name]);
    tls_sni_echo(app, ca.server(&issued));
    let config = format!(
        "{}\n[[apps]]\nid = \"secure\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n",
        base_config("")
    );
    let gw = Gateway::start(&config);
    let mut tls = tls_connect(gw.addr, &name, ca.client(&[])).await.unwrap();
    assert_eq!(read_line(&mut tls).await, format!("sni={name}"));
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(tls);
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut back = vec![0u8; big.len()];
    r.read_exact(&mut back).await.unwrap();
    assert!(back == big, "1 MB echoed through passthrough intact");
    writer.await.unwrap();
}

#[tokio::test]
async fn proxy_protocol_v2_header_reaches_the_instance() {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    // v2 TCP4 header is 28 bytes; then the ClientHello's first byte (0x16)
    let mut captured = capture_prefix(app, 29);
    let config = format!(
        "{}\n[[apps]]\nid = \"pp\"\ndefault_port = {port}\nproxy_protocol = \"v2\"\n[[apps.instances]]\naddress = \"127.0.0.1\"\n",
        base_config("")
    );
    let gw = Gateway::start(&config);
    let client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let hello = gatehouse::hello::parse::build::client_hello(Some("pps.gw.test"), &[], 0);
    let mut client = client;
    client
        .write_all(&gatehouse::hello::parse::build::records(&hello, 16_384))
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), captured.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(got[12], 0x21, "v2 PROXY command");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]), 12);
    assert_eq!(&got[16..20], &[127, 0, 0, 1], "source = the client");
    assert_eq!(
        u16::from_be_bytes([got[24], got[25]]),
        client_addr.port(),
        "source port = the client's"
    );
    assert_eq!(
        u16::from_be_bytes([got[26], got[27]]),
        gw.addr.port(),
        "destination port = the gateway's"
    );
    assert_eq!(got[28], 0x16, "the ClientHello follows untouched");
}
