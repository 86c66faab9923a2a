//! Issue 16 §10 through the real binary: a name that picks a port of the gateway's own
//! listeners (`web-<admin port>.gw.test` on an app whose instance is this host) never reaches
//! them, even when the app declares that port; names asking for ports the app did not declare
//! are refused and do not mark its instance unhealthy for everyone else.

use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind, echo, read_line};
use gatehouse_tests::{base_config, Gateway};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_own_listeners_unreachable_and_undeclared_ports_keep_health() {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "web");
    let ca = TestCa::new();
    // The app declares the admin port too: the own-listener check, not the port list, must
    // be what refuses it.
    let admin_port = gatehouse_tests::knot::free_port();
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    let config = format!(
        "{}\n[[apps]]\nid = \"web\"\ndefault_port = {port}\nports = [{port}, {admin_port}]\n[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\ncertificates = [{wild}]\n",
        base_config("")
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    );
    let gw = Gateway::start_in(dir, &config);
    assert_eq!(gw.admin.unwrap().port(), admin_port);
    let client = ca.client(&[]);

    // The admin listener by name: refused before any byte reaches it.
    let refused = tls_connect(
        gw.addr,
        &format!("web-{admin_port}.gw.test"),
        client.clone(),
    )
    .await;
    if let Ok(mut tls) = refused {
        let _ = tls
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("HTTP/1.1 200"),
            "admin reached by name: {text}"
        );
    }
    let log = gw.wait_log("own listeners", Duration::from_secs(5));
    assert!(!log.contains("marked unhealthy"), "{log}");

    // Ports the app never declared, in a loop: refused by name, the instance stays in rotation.
    for _ in 0..5 {
        if let Ok(mut tls) = tls_connect(gw.addr, "web-1.gw.test", client.clone()).await {
            let mut b = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await;
        }
    }
    let mut tls = tls_connect(gw.addr, "web.gw.test", client).await.unwrap();
    assert_eq!(read_line(&mut tls).await, "web");
    assert!(!gw.log().contains("marked unhealthy"), "{}", gw.log());
}
