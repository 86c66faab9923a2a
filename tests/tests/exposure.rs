//! Issue 17 §4 through the real binary: an app is reached only on the ports it declares and
//! in the modes it allows.

use gatehouse::hello::parse::build::{client_hello, records};
use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind, echo, read_line};
use gatehouse_tests::{base_config, Gateway};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a raw hello for `name` and returns what comes back within a second or two.
async fn raw(gw: std::net::SocketAddr, name: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(&records(&client_hello(Some(name), &[], 0), 16_384))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_only_declared_ports_and_allowed_modes_reach_an_app() {
    let ca = TestCa::new();
    // The instance serves HTTP on one port and has "ssh" on another it never declared.
    let web = bind([127, 0, 0, 1], 0).await.unwrap();
    let web_port = web.local_addr().unwrap().port();
    echo(web, "web");
    let ssh = bind([127, 0, 0, 1], 0).await.unwrap();
    let ssh_port = ssh.local_addr().unwrap().port();
    echo(ssh, "SSH-2.0-OpenSSH");
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    let config = format!(
        r#"{}
[[apps]]
id = "web"
mode = "http"
default_port = {web_port}
[[apps.instances]]
address = "127.0.0.1"

[[apps]]
id = "shell"
default_port = {web_port}
ports = [{web_port}, {ssh_port}]
[[apps.instances]]
address = "127.0.0.1"

[tls]
certificates = [{wild}]
"#,
        base_config("")
    );
    let gw = Gateway::start_in(dir, &config);
    let client = ca.client(&[]);

    // A port the app did not declare: refused by name before any byte reaches it.
    let err = tls_connect(gw.addr, &format!("web-{ssh_port}.gw.test"), client.clone())
        .await
        .expect_err("undeclared port");
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");
    gw.wait_log(
        &format!("app \"web\" does not allow port {ssh_port}"),
        Duration::from_secs(5),
    );

    // Passthrough to an http app would skip the Host check, headers, limits and log.
    let got = raw(gw.addr, "webs.gw.test").await;
    assert!(
        !String::from_utf8_lossy(&got).contains("web"),
        "raw TLS reached the http app"
    );
    gw.wait_log(
        "app \"web\" may not be reached by passthrough (its reachable_by)",
        Duration::from_secs(5),
    );

    // What an app declares stays reachable: a listed port, and passthrough of a tcp app.
    let mut tls = tls_connect(gw.addr, &format!("shell-{ssh_port}.gw.test"), client)
        .await
        .unwrap();
    assert_eq!(read_line(&mut tls).await, "SSH-2.0-OpenSSH");
    let got = raw(gw.addr, "shells.gw.test").await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("web\n"),
        "{got:?}"
    );
}
