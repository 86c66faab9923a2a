//! Issue 17 §1-2 through the real binary: one client cannot hold the listener's descriptors or
//! a capped app's slots away from the others.

use gatehouse::hello::parse::build::{client_hello, records};
use gatehouse_tests::pki::{tls_connect_from, TestCa};
use gatehouse_tests::servers::{bind, connect_from, echo, hold, read_line};
use gatehouse_tests::{base_config, Gateway};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn hello_for(name: &str) -> Vec<u8> {
    records(&client_hello(Some(name), &[], 0), 16_384)
}

/// Polls `f` until it holds, for at most `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_one_source_cannot_hold_the_listener() {
    let holder = bind([127, 0, 0, 1], 0).await.unwrap();
    let hold_port = holder.local_addr().unwrap().port();
    let held = hold(holder);
    let echo_l = bind([127, 0, 0, 1], 0).await.unwrap();
    let echo_port = echo_l.local_addr().unwrap().port();
    echo(echo_l, "echo");
    let config = format!(
        "{}\n[[apps]]\nid = \"hold\"\ndefault_port = {hold_port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n\
         [[apps]]\nid = \"echo\"\ndefault_port = {echo_port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n",
        base_config("[proxy.limits]\nmax_connections_per_source = 20\n")
    )
    .replace("drain = \"10s\"", "drain = \"10s\"\nlinger = \"1s\"\nfirst_data = \"60s\"");
    let gw = Gateway::start(&config);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = gw.open_fds();

    // One source opens twice its cap, each sending a hello for the name whose instance holds.
    let hello = hello_for("holds.gw.test");
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from([127, 0, 0, 1], gw.addr).await.unwrap();
        let _ = s.write_all(&hello).await;
        flood.push(s);
    }
    assert!(
        eventually(Duration::from_secs(5), || held.load(Ordering::SeqCst) >= 20).await,
        "the capped share reached the instance"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        held.load(Ordering::SeqCst),
        20,
        "no more than the source's cap"
    );
    assert!(
        gw.metric("gatehouse_connections_rejected_total{reason=\"source_limit\"}") >= 20,
        "{}",
        gw.metrics()
    );

    // Another source is served while the first holds its cap.
    let mut other = connect_from([127, 0, 0, 2], gw.addr).await.unwrap();
    other.write_all(&hello_for("echos.gw.test")).await.unwrap();
    let greeting = tokio::time::timeout(Duration::from_secs(5), read_line(&mut other))
        .await
        .expect("the second source is answered");
    assert_eq!(greeting, "echo");
    drop(other);

    // The first source leaves; the instance keeps holding its ends. The relays end after
    // the linger, and the gateway's descriptors return to where they were.
    drop(flood);
    let back = eventually(Duration::from_secs(8), || gw.open_fds() <= baseline + 2).await;
    assert!(
        back,
        "descriptors {} did not return to the baseline {baseline}",
        gw.open_fds()
    );
    assert_eq!(held.load(Ordering::SeqCst), 20, "the instance still holds");
}

/// A gateway with tcp app `web` (an echo greeting "web", `app_extra` in its table) under a
/// wildcard certificate of a fresh test CA, the config passed through `edit`.
async fn web_gateway(app_extra: &str, edit: impl FnOnce(String) -> String) -> (Gateway, TestCa) {
    let ca = TestCa::new();
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "web");
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    let config = format!(
        "{}\n[[apps]]\nid = \"web\"\ndefault_port = {port}\n{app_extra}[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\ncertificates = [{wild}]\n",
        base_config("")
    );
    (Gateway::start_in(dir, &edit(config)), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_a_client_holding_its_share_cannot_lock_out_another() {
    let (gw, ca) = web_gateway("max_connections = 4\n", |c| {
        c.replace("drain = \"10s\"", "drain = \"10s\"\nfirst_data = \"3s\"")
    })
    .await;
    let client = ca.client(&[]);

    // Clients that never finish their handshake hold no slot.
    let mut half_open = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from([127, 0, 0, 1], gw.addr).await.unwrap();
        s.write_all(&hello_for("web.gw.test")).await.unwrap();
        half_open.push(s);
    }
    // One client completes four handshakes and sends nothing: it gets its share (2 of 4).
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(
            tls_connect_from([127, 0, 0, 1], gw.addr, "web.gw.test", client.clone())
                .await
                .unwrap(),
        );
    }
    let mut served = 0;
    for tls in holders.iter_mut() {
        let mut line = [0u8; 4];
        let got = tokio::time::timeout(Duration::from_secs(3), tls.read_exact(&mut line)).await;
        if matches!(got, Ok(Ok(_))) && &line == b"web\n" {
            served += 1;
        }
    }
    assert_eq!(
        served, 2,
        "one client holds at most its share of the app's slots"
    );

    // Another client is served throughout.
    let mut other = tls_connect_from([127, 0, 0, 2], gw.addr, "web.gw.test", client.clone())
        .await
        .unwrap();
    assert_eq!(read_line(&mut other).await, "web");
    other.write_all(b"ping\n").await.unwrap();
    assert_eq!(read_line(&mut other).await, "ping");

    // The silent client's connections are closed once `first_data` passes.
    for tls in holders.iter_mut() {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "a silent connection is closed");
    }
    assert!(gw.metric("gatehouse_connections_rejected_total{reason=\"no_data\"}") >= 2);
    assert!(
        gw.log().contains("its share of 2 connections"),
        "{}",
        gw.log()
    );
    drop(half_open);
}

/// `GET <path_and_query>` for the attestation bundle on one keep-alive connection.
async fn attest_get(
    send: &mut hyper::client::conn::http1::SendRequest<gatehouse_tests::http::ReqBody>,
    query: &str,
) -> (u16, String) {
    use gatehouse_tests::http::{body, request, text};
    let req = request(
        "GET",
        "web.gw.test",
        &format!("/.well-known/gatehouse/attestation{query}"),
    )
    .body(body(""))
    .unwrap();
    send.ready()
        .await
        .expect("the attestation connection stays open");
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, text(resp).await)
}

/// An attestation connection (ALPN `gatehouse-attest/1`) from loopback address `source`.
async fn attest_conn(
    gw: &Gateway,
    ca: &TestCa,
    source: [u8; 4],
) -> hyper::client::conn::http1::SendRequest<gatehouse_tests::http::ReqBody> {
    let tls = tls_connect_from(
        source,
        gw.addr,
        "web.gw.test",
        ca.client(&["gatehouse-attest/1"]),
    )
    .await
    .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_fresh_quotes_are_limited_per_client_and_challenges_need_none() {
    let (gw, ca) = web_gateway("", |c| c).await;

    // One client loops nonce requests on one keep-alive connection...
    let mut a = attest_conn(&gw, &ca, [127, 0, 0, 1]).await;
    let mut answered = 0;
    for i in 0..8 {
        let (status, _) = attest_get(&mut a, &format!("?nonce={i:02x}")).await;
        assert!(status == 200 || status == 429, "{status}");
        answered += usize::from(status == 200);
    }
    assert!(
        answered <= 2,
        "one client got {answered} fresh quotes in a burst"
    );
    // ...and another client's fresh request is still answered.
    let mut b = attest_conn(&gw, &ca, [127, 0, 0, 2]).await;
    let (status, body) = attest_get(&mut b, "?nonce=bb").await;
    assert_eq!(status, 200, "{body}");
    let fresh: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fresh["claims"]["nonce"], "bb");

    // Freshness without a quote: a statement by the attested key over the challenge, as
    // often as asked; it verifies offline against the challenge.
    let mut last = String::new();
    for _ in 0..6 {
        let (status, body) = attest_get(&mut a, "?challenge=c0ffee").await;
        assert_eq!(status, 200, "{body}");
        last = body;
    }
    let statement: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(statement["context"], "gatehouse-freshness");
    let d = gw.path();
    std::fs::write(d.join("fresh.json"), &last).unwrap();
    std::fs::write(d.join("challenge"), "c0ffee").unwrap();
    std::fs::write(d.join("other"), "c0ffef").unwrap();
    let verify = |payload: &str| {
        std::process::Command::new(gatehouse_tests::binary())
            .current_dir(d)
            .args(["verify-statement", "fresh.json", "--payload", payload])
            .args([
                "--insecure-trust-simulator-root",
                "--accept-any-measurements",
            ])
            .output()
            .unwrap()
    };
    let ok = verify("challenge");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(!verify("other").status.success(), "bound to the challenge");
}

/// An HTTP/1.1 origin answering every request with a 64 MiB body, counting the connections
/// it holds open (a connection ends when the gateway closes it mid-body).
fn endless_body(
    listener: tokio::net::TcpListener,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let total = 64usize << 20;
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = s
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
                    )
                    .await
                    .is_ok();
                let mut left = total;
                while sent && left > 0 {
                    sent = s.write_all(&chunk).await.is_ok();
                    left -= chunk.len();
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_clients_that_stop_reading_free_their_instance_connections() {
    use gatehouse_tests::http::{body, http_app, request, request_h2, HttpGateway};
    let origin = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = origin.local_addr().unwrap().port();
    let open = endless_body(origin);
    let h = HttpGateway::start_edited("", &http_app("big", port, &["127.0.0.1"], ""), |c| {
        c.replace("drain = \"10s\"", "drain = \"10s\"\nwrite = \"2s\"")
    });

    // HTTP/1.1: five clients each ask for the body and never read it.
    let mut h1_clients = Vec::new();
    for _ in 0..5 {
        let mut tls = h.tls("big.gw.test", &["http/1.1"]).await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: big.gw.test\r\n\r\n")
            .await
            .unwrap();
        h1_clients.push(tls);
    }
    // h2: one connection, ten streams, no body read.
    let mut h2 = h.h2("big.gw.test").await;
    let mut responses = Vec::new();
    for _ in 0..10 {
        let req = request_h2("GET", "big.gw.test", "/")
            .body(body(""))
            .unwrap();
        responses.push(h2.send_request(req).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || open.load(Ordering::SeqCst) >= 15).await,
        "each request holds an instance connection: {}",
        open.load(Ordering::SeqCst)
    );
    // The responses make no progress for `write`: each ends and frees its connection,
    // while the clients keep their own connections open.
    assert!(
        eventually(Duration::from_secs(15), || open.load(Ordering::SeqCst) == 0).await,
        "instance connections still held: {}",
        open.load(Ordering::SeqCst)
    );
    drop((h1_clients, responses));
    // The gateway still serves others.
    let mut h1 = h.h1("big.gw.test").await;
    let resp = h1
        .send_request(request("HEAD", "big.gw.test", "/").body(body("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
