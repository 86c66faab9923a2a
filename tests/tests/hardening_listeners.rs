//! Issue 16 §3 through the real binary: the plain HTTP listeners (here the port-80 redirect and
//! admin) cap their connections and close idle ones, so thousands of idle sockets from one
//! client cannot take the process's descriptors; a TLS client through the main listener is
//! served the whole time. The gateway runs under a 2,048-descriptor limit (hard and soft) to
//! make exhaustion reachable; today's code ran out of descriptors at about 2,040 sockets.

use gatehouse_tests::http::{http_app, HttpGateway};
use gatehouse_tests::servers::{bind, http_whoami};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_idle_sockets_on_plain_listeners_cannot_starve_tls() {
    gatehouse::fdlimit::raise_to_hard().unwrap(); // this test holds 5,000 sockets itself
    let origin = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = origin.local_addr().unwrap().port();
    http_whoami(origin, "origin");
    let s = HttpGateway::start_wrapped(
        "[proxy.http]\nredirect_listen = \"127.0.0.1:0\"\n",
        &http_app("web", port, &["127.0.0.1"], ""),
        |c| c,
        &["prlimit", "--nofile=2048:2048"],
    );
    let (gw, ca_pem) = (&s.gw, &s.ca_pem);
    let served = || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(ca_pem)
            .args([
                "--resolve",
                &format!("web.gw.test:{}:127.0.0.1", gw.addr.port()),
            ])
            .arg(format!("https://web.gw.test:{}/", gw.addr.port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("origin")
    };
    assert!(served(), "served before the flood");
    let baseline = gw.open_fds(); // with a pooled connection to the origin

    // 2,500 idle sockets to each plain listener: 5,000 in all, far past the limit.
    let mut idle = Vec::new();
    for target in [gw.redirect.unwrap(), gw.admin.unwrap()] {
        for _ in 0..2_500 {
            idle.push(tokio::net::TcpStream::connect(target).await.unwrap());
        }
    }
    for round in 0..3 {
        assert!(
            served(),
            "TLS client served during the flood (round {round})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = gw.open_fds();
    assert!(
        held < baseline + 2 * 300,
        "each plain listener holds at most its cap: {held} descriptors (baseline {baseline})"
    );

    // Every idle socket is closed by the gateway: at once when over the cap, else at the
    // header deadline (10 s).
    let start = Instant::now();
    for s in &mut idle {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
            .await
            .expect("closed by the gateway within 20 s");
        assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    drop(idle);
    assert!(served(), "served after the flood");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.open_fds() > baseline + 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = gw.open_fds();
    assert!(
        now <= baseline + 8,
        "descriptors back to baseline: {now} (baseline {baseline})"
    );
}
