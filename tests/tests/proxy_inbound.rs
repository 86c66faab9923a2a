//! PROXY protocol from a load balancer in front: the real client address is carried through
//! to the instance's own PROXY header; connections without a header, or from a source outside
//! `proxy_protocol_trusted`, are refused.

use gatehouse_tests::servers::{bind, capture_prefix, connect_from};
use gatehouse_tests::{base_config, Gateway};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway expecting PROXY headers from 127.0.0.1 only, app `pp` (passthrough name
/// `pps.gw.test`) whose instance captures the first `len` bytes it gets (its own PROXY
/// header); and a hello for that name.
async fn pp_gateway(
    len: usize,
) -> (
    Gateway,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    Vec<u8>,
) {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    let captured = capture_prefix(app, len);
    let config = format!(
        "{}\n[[apps]]\nid = \"pp\"\ndefault_port = {port}\nproxy_protocol = \"v1\"\n[[apps.instances]]\naddress = \"127.0.0.1\"\n",
        base_config("proxy_protocol_inbound = true\nproxy_protocol_trusted = [\"127.0.0.1\"]")
    );
    let hello = gatehouse::hello::parse::build::records(
        &gatehouse::hello::parse::build::client_hello(Some("pps.gw.test"), &[], 0),
        16_384,
    );
    (Gateway::start(&config), captured, hello)
}

/// The next PROXY header the instance received (within 10 s).
async fn next_header(captured: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> String {
    let got = tokio::time::timeout(Duration::from_secs(10), captured.recv())
        .await
        .expect("the instance got a header")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn inbound_v1_and_v2_become_the_instances_header() {
    let expected = "PROXY TCP4 203.0.113.9 198.51.100.1 40000 443\r\n".to_string();
    let (gw, mut captured, hello) = pp_gateway(expected.len()).await;
    // v1 inbound, header and hello in one write
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(&[expected.as_bytes(), &hello].concat())
        .await
        .unwrap();
    assert_eq!(next_header(&mut captured).await, expected);

    // v2 inbound (the spec's TCP4 block), header split from the hello
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend([203, 0, 113, 9, 198, 51, 100, 1]);
    v2.extend(40000u16.to_be_bytes());
    v2.extend(443u16.to_be_bytes());
    let mut c2 = TcpStream::connect(gw.addr).await.unwrap();
    c2.write_all(&v2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c2.write_all(&hello).await.unwrap();
    assert_eq!(next_header(&mut captured).await, expected);

    // no header: refused and counted
    let mut c3 = TcpStream::connect(gw.addr).await.unwrap();
    c3.write_all(&hello).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c3.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"proxy_header\"}",
            1
        ),
        1
    );
    drop((c, c2));
}

#[tokio::test]
async fn exposure_proxy_headers_are_believed_only_from_trusted_sources() {
    let claimed = "PROXY TCP4 203.0.113.66 198.51.100.1 40000 443\r\n".to_string();
    let (gw, mut captured, hello) = pp_gateway(claimed.len()).await;
    // A client connecting directly (127.0.0.2 is not a trusted balancer) claims an address.
    let mut direct = connect_from([127, 0, 0, 2], gw.addr).await.unwrap();
    let _ = direct
        .write_all(&[claimed.as_bytes(), &hello].concat())
        .await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), direct.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), captured.recv())
            .await
            .is_err(),
        "nothing reached the instance"
    );
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"untrusted_proxy\"}",
            1
        ),
        1
    );
    assert!(
        gw.log()
            .contains("PROXY header from 127.0.0.2, which is not in proxy_protocol_trusted"),
        "{}",
        gw.log()
    );
    // The trusted balancer's header is still believed.
    let mut lb = connect_from([127, 0, 0, 1], gw.addr).await.unwrap();
    lb.write_all(&[claimed.as_bytes(), &hello].concat())
        .await
        .unwrap();
    assert_eq!(next_header(&mut captured).await, claimed);
}
