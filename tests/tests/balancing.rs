//! Instance choice: failover past dead instances, spreading load, the per-app cap.

use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind_same_port, echo, read_line};
use gatehouse_tests::{base_config, Gateway};
use std::collections::HashMap;
use tokio::io::AsyncReadExt;

fn app_config(ca: &TestCa, dir: &std::path::Path, port: u16, ips: &[&str], extra: &str) -> String {
    let cert = ca.write(dir, "wild", &["*.gw.test"]);
    let instances: String = ips
        .iter()
        .map(|ip| format!("[[apps.instances]]\naddress = \"{ip}\"\n"))
        .collect();
    format!(
        "{}\n[[apps]]\nid = \"web\"\ndefault_port = {port}\n{extra}\n{instances}\n[tls]\ncertificates = [{cert}]\n",
        base_config("")
    )
}

#[tokio::test]
async fn failover_past_a_dead_instance_and_spread_over_live_ones() {
    let ca = TestCa::new();
    // 127.0.0.2 has nothing listening on the port: every connect to it is refused.
    let (port, mut listeners) =
        bind_same_port(&[[127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 2]]).await;
    drop(listeners.pop());
    echo(listeners.remove(0), "three");
    echo(listeners.remove(0), "four");
    let dir = tempfile::tempdir().unwrap();
    let config = app_config(
        &ca,
        dir.path(),
        port,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "",
    );
    let gw = Gateway::start_in(dir, &config);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut tls = tls_connect(gw.addr, "web.gw.test", ca.client(&[]))
            .await
            .unwrap();
        *seen.entry(read_line(&mut tls).await).or_default() += 1;
        held.push(tls); // keep them open so active-connection counts steer the choice
    }
    assert_eq!(seen.len(), 2, "only live instances answer: {seen:?}");
    assert!(
        seen["three"] >= 8 && seen["four"] >= 8,
        "two choices on active connections spread evenly: {seen:?}"
    );
    assert!(
        gw.log().contains("127.0.0.2"),
        "the failed connect is logged with its address"
    );
    assert_eq!(
        gw.metric("gatehouse_connections_rejected_total{reason=\"upstream_unreachable\"}"),
        0
    );
}

#[tokio::test]
async fn all_instances_down_is_refused_and_counted() {
    let ca = TestCa::new();
    let (port, listeners) = bind_same_port(&[[127, 0, 0, 5], [127, 0, 0, 6]]).await;
    drop(listeners);
    let dir = tempfile::tempdir().unwrap();
    let config = app_config(&ca, dir.path(), port, &["127.0.0.5", "127.0.0.6"], "");
    let gw = Gateway::start_in(dir, &config);
    let mut tls = tls_connect(gw.addr, "web.gw.test", ca.client(&[]))
        .await
        .unwrap();
    // handshake done, then no instance: the gateway closes the TLS session
    assert_eq!(read_line(&mut tls).await, "");
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"upstream_unreachable\"}",
            1
        ),
        1
    );
}

#[tokio::test]
async fn per_app_connection_cap() {
    let ca = TestCa::new();
    let (port, mut listeners) = bind_same_port(&[[127, 0, 0, 1]]).await;
    echo(listeners.remove(0), "web");
    let dir = tempfile::tempdir().unwrap();
    let config = app_config(&ca, dir.path(), port, &["127.0.0.1"], "max_connections = 2").replace(
        "[proxy.timeouts]",
        "[proxy.limits]\napp_share_per_source = 1.0\n[proxy.timeouts]",
    );
    let gw = Gateway::start_in(dir, &config);
    let mut a = tls_connect(gw.addr, "web.gw.test", ca.client(&[]))
        .await
        .unwrap();
    let mut b = tls_connect(gw.addr, "web.gw.test", ca.client(&[]))
        .await
        .unwrap();
    assert_eq!(read_line(&mut a).await, "web");
    assert_eq!(read_line(&mut b).await, "web");
    // The slot is taken after the handshake: the third connection is closed right after it.
    if let Ok(mut third) = tls_connect(gw.addr, "web.gw.test", ca.client(&[])).await {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            third.read_to_end(&mut rest),
        )
        .await
        .expect("closed at once");
        assert!(
            rest.is_empty(),
            "third connection over the cap reached the app"
        );
    }
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"app_full\"}",
            1
        ),
        1
    );
    assert!(
        gw.log().contains("max_connections = 2"),
        "the reason is logged"
    );
    drop(a);
    // the slot comes back once the gateway sees the close
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut c) = tls_connect(gw.addr, "web.gw.test", ca.client(&[])).await {
            ok = read_line(&mut c).await == "web";
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot frees when a connection closes");
}
