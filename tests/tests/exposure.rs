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

/// An HTTP/1.1 origin answering each request with its raw request head as the body.
fn head_echo(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = s.write_all(&[reply.as_bytes(), &head].concat()).await;
            });
        }
    });
}

/// An HTTP/1.1 origin that switches protocols on every request, asked or not.
fn switches_unasked(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\nTUNNEL")
                    .await;
                let _ = s.read(&mut b).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_http_headers_the_app_can_trust() {
    use gatehouse_tests::http::{body, http_app, request, request_h2, text, HttpGateway};
    let heads = bind([127, 0, 0, 1], 0).await.unwrap();
    let heads_port = heads.local_addr().unwrap().port();
    head_echo(heads);
    let switch = bind([127, 0, 0, 1], 0).await.unwrap();
    let switch_port = switch.local_addr().unwrap().port();
    switches_unasked(switch);
    let apps = http_app("web", heads_port, &["127.0.0.1"], "")
        + &http_app("sw", switch_port, &["127.0.0.1"], "");
    let h = HttpGateway::start("", &apps);

    // Look-alikes and the client-address family from a client never reach the app as such.
    let mut h1 = h.h1("web.gw.test").await;
    let req = request("GET", "web.gw.test", "/")
        .header("X_Forwarded_For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("True-Client-IP", "6.6.6.6")
        .header("X-Client-IP", "6.6.6.6")
        .header("X-Forwarded-Port", "1")
        .header("X-Forwarded-Scheme", "http")
        .header("X-Forwarded-Ssl", "off")
        .body(body(""))
        .unwrap();
    let head = text(h1.send_request(req).await.unwrap())
        .await
        .to_lowercase();
    assert!(!head.contains("6.6.6.6"), "{head}");
    for gone in [
        "x_forwarded_for",
        "x-forwarded-port",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
    ] {
        assert!(!head.contains(gone), "{gone} reached the app:\n{head}");
    }
    assert!(head.contains("x-real-ip: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");

    // h2 cookies (one field per cookie, as browsers send them) reach HTTP/1.1 as one line.
    let mut h2 = h.h2("web.gw.test").await;
    let req = request_h2("GET", "web.gw.test", "/")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(body(""))
        .unwrap();
    let head = text(h2.send_request(req).await.unwrap())
        .await
        .to_lowercase();
    assert_eq!(head.matches("cookie:").count(), 1, "{head}");
    assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");

    // A 101 to a request that asked for no upgrade is not relayed as a tunnel.
    let mut h1 = h.h1("sw.gw.test").await;
    let resp = h1
        .send_request(request("GET", "sw.gw.test", "/").body(body("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(!text(resp).await.contains("TUNNEL"));
}
