//! Terminating path: TLS at the gateway, plaintext relayed to the instance (tcp mode).

use gatehouse_tests::pki::{peer_names, tls_connect, TestCa};
use gatehouse_tests::servers::{bind, echo, read_line};
use gatehouse_tests::{base_config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    gw: Gateway,
    ca: TestCa,
    /// The port `web` listens on (its default port).
    web_port: u16,
}

/// Apps `web` (echo on 127.0.0.1) and `api`; a wildcard cert for `*.gw.test` and an exact one
/// for `api.gw.test`.
async fn setup() -> Setup {
    let ca = TestCa::new();
    let web = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = web.local_addr().unwrap().port();
    echo(web, "web");
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    let exact = ca.write(dir.path(), "api", &["api.gw.test"]);
    let config = format!(
        r#"{}
[[apps]]
id = "web"
default_port = {port}
[[apps.instances]]
address = "127.0.0.1"

[[apps]]
id = "api"
default_port = {port}
[[apps.instances]]
address = "127.0.0.1"

[tls]
certificates = [{wild}, {exact}]
"#,
        base_config("")
    );
    let gw = Gateway::start_in(dir, &config);
    Setup {
        gw,
        ca,
        web_port: port,
    }
}

#[tokio::test]
async fn terminate_and_relay_plaintext() {
    let s = setup().await;
    let mut tls = tls_connect(s.gw.addr, "web.gw.test", s.ca.client(&[]))
        .await
        .unwrap();
    assert_eq!(read_line(&mut tls).await, "web");
    tls.write_all(b"hello through TLS\n").await.unwrap();
    assert_eq!(read_line(&mut tls).await, "hello through TLS");
    // TLS close_notify + FIN becomes a FIN to the instance, which answers and closes.
    tls.shutdown().await.unwrap();
    let mut rest = String::new();
    tls.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "web: bye\n");
}

#[tokio::test]
async fn exact_certificate_beats_wildcard() {
    let s = setup().await;
    let tls = tls_connect(s.gw.addr, "api.gw.test", s.ca.client(&[]))
        .await
        .unwrap();
    assert_eq!(peer_names(tls.get_ref().1), vec!["api.gw.test"]);
    let tls = tls_connect(s.gw.addr, "web.gw.test", s.ca.client(&[]))
        .await
        .unwrap();
    assert_eq!(peer_names(tls.get_ref().1), vec!["*.gw.test"]);
    // the port form (a port the app declares: its default) is still covered by the wildcard
    let name = format!("web-{}.gw.test", s.web_port);
    let tls = tls_connect(s.gw.addr, &name, s.ca.client(&[])).await;
    assert!(tls.is_ok(), "{tls:?}");
}

#[tokio::test]
async fn alpn_follows_the_flag() {
    let s = setup().await;
    let tls = tls_connect(s.gw.addr, "webg.gw.test", s.ca.client(&["h2", "http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls = tls_connect(s.gw.addr, "web.gw.test", s.ca.client(&["h2", "http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // a tcp-mode app reached with a foreign ALPN still gets a handshake (no ALPN chosen)
    let tls = tls_connect(s.gw.addr, "web.gw.test", s.ca.client(&["ssh"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn unknown_app_is_refused_with_unrecognized_name() {
    let s = setup().await;
    for name in [
        "nope.gw.test",
        "web-0.gw.test",
        "a.b.gw.test",
        "gw.test",
        "elsewhere.example",
    ] {
        let err = tls_connect(s.gw.addr, name, s.ca.client(&[]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("UnrecognisedName") || err.to_string().contains("nrecogni"),
            "{name}: {err}"
        );
    }
    assert_eq!(
        s.gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"no_route\"}",
            5
        ),
        5
    );
}

#[tokio::test]
async fn tls12_and_tls13_both_terminate() {
    let s = setup().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.ca.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tls = tls_connect(s.gw.addr, "web.gw.test", std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(read_line(&mut tls).await, "web");
    }
}

/// The same client config remembers tickets: its second connection resumes, unless the
/// gateway has `resumption = false`. Counted on the server side.
#[tokio::test]
async fn resumption_is_counted_and_can_be_turned_off() {
    for resumption in [true, false] {
        let ca = TestCa::new();
        let web = bind([127, 0, 0, 1], 0).await.unwrap();
        let port = web.local_addr().unwrap().port();
        echo(web, "web");
        let dir = tempfile::tempdir().unwrap();
        let cert = ca.write(dir.path(), "wild", &["*.gw.test"]);
        let config = format!(
            "{}\n[[apps]]\nid = \"web\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\nresumption = {resumption}\ncertificates = [{cert}]\n",
            base_config("")
        );
        let gw = Gateway::start_in(dir, &config);
        let client = ca.client(&[]);
        for _ in 0..3 {
            let mut tls = tls_connect(gw.addr, "web.gw.test", client.clone())
                .await
                .unwrap();
            assert_eq!(read_line(&mut tls).await, "web"); // tickets arrive after the handshake
        }
        let full = gw.wait_metric("gatehouse_tls_handshakes_total{kind=\"full\"}", 1);
        let resumed = gw.metric("gatehouse_tls_handshakes_total{kind=\"resumed\"}");
        if resumption {
            assert_eq!((full, resumed), (1, 2), "resumption on");
        } else {
            assert_eq!((full, resumed), (3, 0), "resumption off");
        }
    }
}
