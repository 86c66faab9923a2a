//! Chaos among an app's instances (`cargo test chaos`): one resets every connection, one
//! accepts and never answers, one disappears in the middle of its response body, beside a
//! healthy one. Clients see the documented statuses (502, 504, a broken-off body, never a
//! short body passed off as whole), the healthy instance keeps serving (passive health takes
//! the others out, the one cutting bodies too), and nothing leaks: connections back to zero,
//! descriptors and tasks back to their baseline.

use gatehouse_tests::http::{http_app, HttpGateway};
use std::time::{Duration, Instant};

/// An instance that answers a status line and headers promising 100 000 bytes, sends 1 000,
/// and disappears.
fn vanish_mid_body(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    .await;
                let _ = s.write_all(&[b'x'; 1000]).await;
            });
        }
    });
}

/// What a client saw for one request.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A whole response: status and body.
    Whole(u16, String),
    /// A status, then the body broke off (the connection or stream was reset).
    Cut(u16),
    /// No response at all.
    Failed(String),
}

async fn get(g: &HttpGateway, host: &str, h2: bool) -> Seen {
    use gatehouse_tests::http::{body, request, request_h2};
    use http_body_util::BodyExt;
    let resp = if h2 {
        let mut c = g.h2(host).await;
        c.send_request(request_h2("GET", host, "/").body(body("")).unwrap())
            .await
    } else {
        let mut c = g.h1(host).await;
        c.send_request(request("GET", host, "/").body(body("")).unwrap())
            .await
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Seen::Failed(e.to_string()),
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(b) => Seen::Whole(status, String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(_) => Seen::Cut(status),
    }
}

/// `rounds` requests to each app, 20 at a time, half over h2.
async fn load(
    g: &std::sync::Arc<HttpGateway>,
    apps: &[&str],
    rounds: usize,
) -> Vec<(String, Seen)> {
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..rounds {
        for app in apps {
            let (g, semaphore) = (g.clone(), semaphore.clone());
            let host = format!("{app}.gw.test");
            tasks.spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                let seen = get(&g, &host, i % 2 == 1).await;
                (host, seen)
            });
        }
    }
    tasks.join_all().await
}

/// Established TCP connections of process `pid` to remote port `port` (`ss`).
fn pooled_to(pid: u32, port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htnp", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_flapping_instances_get_documented_statuses_and_leak_nothing() {
    use gatehouse_tests::origins::{never_answer, reset_before_answer};
    use gatehouse_tests::servers::{bind_same_port, http_whoami};
    let ips = [
        [127, 0, 0, 1],
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 4],
    ];
    let (port, ls) = bind_same_port(&ips).await;
    let mut ls = ls.into_iter();
    http_whoami(ls.next().unwrap(), "web");
    reset_before_answer(ls.next().unwrap());
    never_answer(ls.next().unwrap());
    vanish_mid_body(ls.next().unwrap());
    let apps = http_app("web", port, &["127.0.0.1"], "")
        + &http_app("reset", port, &["127.0.0.2"], "")
        + &http_app("mute", port, &["127.0.0.3"], "")
        + &http_app("vanish", port, &["127.0.0.4"], "")
        + &http_app(
            "mixed",
            port,
            &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
            "",
        );
    let g = std::sync::Arc::new(HttpGateway::start(
        "[proxy.http]\nupstream_read_timeout = \"1s\"\n",
        &apps,
    ));
    let names = ["web", "reset", "mute", "vanish", "mixed"];
    let settled = |g: &HttpGateway| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let active = g.gw.metric("gatehouse_connections_active");
            if active == 0 {
                // The instances' pool keeps idle connections by design (one descriptor and
                // one watch task each), as many as the load's concurrency happened to open:
                // counted out, so what remains is what nothing should hold.
                let pooled = pooled_to(g.gw.pid(), port);
                return (
                    g.gw.open_fds().saturating_sub(pooled),
                    g.gw.metric("gatehouse_tasks_alive")
                        .saturating_sub(pooled as u64),
                );
            }
            assert!(
                Instant::now() < deadline,
                "{active} connections still open:\n{}",
                g.gw.metrics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // A first round fills the pools; what it leaves open is the baseline.
    let t0 = Instant::now();
    load(&g, &names, 10).await;
    eprintln!("warm-up load {:?}", t0.elapsed());
    let baseline = settled(g.as_ref());
    eprintln!("settled {:?}", t0.elapsed());

    let seen = load(&g, &names, 40).await;
    eprintln!("load {:?}", t0.elapsed());
    let mut healthy_in_mixed = 0;
    for (host, s) in &seen {
        let ok = match (host.as_str(), s) {
            ("web.gw.test", Seen::Whole(200, b)) => b.starts_with("web\n"),
            ("reset.gw.test", Seen::Whole(502, _)) => true,
            ("mute.gw.test", Seen::Whole(504, b)) => {
                b.starts_with("504 the instance did not answer")
            }
            // Never a whole response shorter than promised: the client sees the break.
            ("vanish.gw.test", Seen::Cut(200)) => true,
            ("mixed.gw.test", Seen::Whole(200, b)) if b.starts_with("web\n") => {
                healthy_in_mixed += 1;
                true
            }
            ("mixed.gw.test", Seen::Whole(502 | 504, _) | Seen::Cut(200)) => true,
            _ => false,
        };
        assert!(ok, "{host}: {s:?}");
    }
    assert!(
        healthy_in_mixed >= 30,
        "the healthy instance keeps serving beside failing ones: {healthy_in_mixed} of 40"
    );
    // Nothing left behind: no connection open, descriptors and tasks back to the baseline.
    let after = settled(g.as_ref());
    assert!(baseline.1 > 0, "tasks are counted:\n{}", g.gw.metrics());
    assert!(
        after.0 <= baseline.0 + 4 && after.1 <= baseline.1 + 4,
        "(descriptors, tasks) {after:?} after the faults, {baseline:?} before"
    );
    eprintln!(
        "chaos: {} requests, {healthy_in_mixed} of 40 to the mixed app served by its healthy instance, (descriptors, tasks) beside {} pooled: {baseline:?} → {after:?}",
        seen.len(),
        pooled_to(g.gw.pid(), port)
    );
}
