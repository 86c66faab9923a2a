//! `mode = "http"` when instances or clients misbehave, through the real binary: retries for
//! idempotent requests only, active health checks taking an instance out and back, 504 from a
//! silent instance, 431 / 413 limits, slow-header clients closed, and the port-80 redirect.

use gatehouse_tests::http::{body, http_app as app, request, request_h2, text, HttpGateway};
use gatehouse_tests::origins::{
    closes_idle_connections, never_answer, reset_before_answer, with_health,
};
use gatehouse_tests::servers::{bind_same_port, http_whoami};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status code of each curl run (`-w %{http_code}` on its own last line).
fn code(out: &str) -> &str {
    out.rsplit('\n').next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_on_a_resetting_instance_and_post_is_not() {
    let (port, ls) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    let mut ls = ls.into_iter();
    http_whoami(ls.next().unwrap(), "alive");
    reset_before_answer(ls.next().unwrap());
    let g = HttpGateway::start("", &app("web", port, &["127.0.0.1", "127.0.0.2"], ""));
    let url = g.url("web.gw.test", "/");
    // POST first: the resetting instance is not marked unhealthy by a request that must not
    // be replayed, so about half of these land on it and fail.
    let mut post_codes = Vec::new();
    for _ in 0..16 {
        // HTTP/1.1: curl 7.88 reports an error for a complete h2 response that the server
        // follows with RST_STREAM(NO_ERROR) while curl still uploads (RFC 9113 §8.1 allows it).
        let args = [
            "--http1.1",
            "-X",
            "POST",
            "-d",
            "x=1",
            "-w",
            "\n%{http_code}",
            &url,
        ];
        let out = g.curl("web.gw.test", &args);
        post_codes.push(code(&out).to_owned());
    }
    assert!(
        post_codes.iter().any(|c| c == "502"),
        "a POST is never replayed: {post_codes:?}"
    );
    assert!(post_codes.iter().any(|c| c == "200"), "{post_codes:?}");
    // GET: the same instance resets, the gateway goes to the other one.
    for _ in 0..16 {
        let out = g.curl("web.gw.test", &["-w", "\n%{http_code}", &url]);
        assert!(out.starts_with("alive\n") && code(&out) == "200", "{out}");
    }
    assert!(g
        .gw
        .log()
        .contains("failed before answering; marked unhealthy"));
}

/// An instance connection kept for the next request (bound to the client connection, or
/// pooled) may have been closed by the instance meanwhile: the request goes on a new one,
/// the instance is not blamed, and nothing reaches the client but the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_h1_a_kept_connection_the_instance_closed_is_replaced_unblamed() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    closes_idle_connections(ls.remove(0), Duration::from_millis(30), accepted.clone());
    let g = HttpGateway::start("", &app("web", port, &["127.0.0.1"], ""));
    let mut h1 = g.h1("web.gw.test").await;
    for i in 0..4 {
        let resp = h1
            .send_request(request("GET", "web.gw.test", "/").body(body("")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(text(resp).await, "ok\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Curl's requests, each on a client connection of its own, find the pooled ones dead too.
    let url = g.url("web.gw.test", "/");
    for _ in 0..3 {
        let out = g.curl("web.gw.test", &["--http1.1", "-w", "\n%{http_code}", &url]);
        assert_eq!(out, "ok\n\n200");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        7,
        "one instance connection per request"
    );
    assert!(!g.gw.log().contains("marked unhealthy"), "{}", g.gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_an_instance_out_and_bring_it_back() {
    let (port, ls) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    let healthy = [
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    ];
    let probes = Arc::new(AtomicUsize::new(0));
    for ((l, name), h) in ls.into_iter().zip(["one", "two"]).zip(&healthy) {
        with_health(l, name, h.clone(), probes.clone());
    }
    let check = "[apps.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\nrise = 2\n";
    let g = HttpGateway::start("", &app("web", port, &["127.0.0.1", "127.0.0.2"], check));
    let url = g.url("web.gw.test", "/");
    let seen = |n: usize| -> HashSet<String> {
        (0..n)
            .map(|_| g.curl("web.gw.test", &[&url]).trim().to_owned())
            .collect()
    };
    let until = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = seen(8);
            if s.len() == want.len() && want.iter().all(|w| s.contains(*w)) {
                return;
            }
            assert!(Instant::now() < deadline, "wanted {want:?}, last saw {s:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until(&["one", "two"]);
    healthy[1].store(false, Ordering::Relaxed);
    until(&["one"]);
    g.gw.wait_log("instance out of rotation", Duration::from_secs(5));
    // While out, 24 requests in a row never reach it.
    assert_eq!(seen(24), HashSet::from(["one".to_owned()]));
    healthy[1].store(true, Ordering::Relaxed);
    until(&["one", "two"]);
    g.gw.wait_log("instance back in rotation", Duration::from_secs(5));
    // Both failing: no instance is chosen at all.
    healthy[0].store(false, Ordering::Relaxed);
    healthy[1].store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = g.curl("web.gw.test", &["-w", "\n%{http_code}", &url]);
        if code(&out) == "503" {
            assert!(out.starts_with("503 no healthy instance"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "never 503: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probes.load(Ordering::Relaxed) > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_instance_gets_504_and_limits_answer_431_and_413() {
    let (port, ls) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    let mut ls = ls.into_iter();
    http_whoami(ls.next().unwrap(), "web");
    never_answer(ls.next().unwrap());
    let http = "[proxy.http]\nupstream_read_timeout = \"1s\"\nmax_request_body = 1000\nmax_headers = 20\nmax_header_bytes = 4096\n";
    let apps = app("web", port, &["127.0.0.1"], "") + &app("mute", port, &["127.0.0.2"], "");
    let g = HttpGateway::start(http, &apps);
    let mute = g.url("mute.gw.test", "/");
    let out = g.curl("mute.gw.test", &["-w", "\n%{http_code}", &mute]);
    assert!(
        out.starts_with("504 the instance did not answer in time"),
        "{out}"
    );

    let web = g.url("web.gw.test", "/");
    let many: Vec<String> = (0..25).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    args.extend(["-w", "\n%{http_code}", &web]);
    let out = g.curl("web.gw.test", &args);
    assert!(
        out.starts_with("431 too many request header fields"),
        "{out}"
    );
    let long = format!("x-long: {}", "a".repeat(5000));
    let out = g.curl("web.gw.test", &["-H", &long, "-w", "\n%{http_code}", &web]);
    assert!(out.starts_with("431 request header too large"), "{out}");
    // Under the limits: through.
    let out = g.curl(
        "web.gw.test",
        &["-H", "x-ok: 1", "-w", "\n%{http_code}", &web],
    );
    assert_eq!(code(&out), "200", "{out}");

    let big = "b".repeat(2000);
    // Over HTTP/1.1 with curl: declared by Content-Length (refused before any instance is
    // asked), then chunked with no length (counted as it streams), then a small body.
    let chunked = ["-H", "Transfer-Encoding: chunked"];
    for (extra, data, want) in [
        (&[][..], &big, "413"),
        (&chunked[..], &big, "413"),
        (&[][..], &"small".to_owned(), "200"),
    ] {
        let mut args = vec![
            "--http1.1",
            "--data-binary",
            data,
            "-w",
            "\n%{http_code}",
            &web,
        ];
        args.extend(extra);
        let out = g.curl("web.gw.test", &args);
        assert_eq!(code(&out), want, "{extra:?}: {out}");
        assert!(
            want == "200" || out.starts_with("413 request body larger"),
            "{out}"
        );
    }
    // The same over h2 (hyper's client: see the POST note in the retry test about curl).
    let mut h2 = g.h2("web.gw.test").await;
    for (payload, want) in [(big.clone(), 413), ("small".to_owned(), 200)] {
        let req = request_h2("POST", "web.gw.test", "/")
            .body(body(payload))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want);
        let text = text(resp).await;
        assert!(
            want == 200 || text.starts_with("413 request body larger"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_header_is_closed() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    http_whoami(ls.remove(0), "web");
    let http = "[proxy.http]\nheader_read_timeout = \"1s\"\n";
    let g = HttpGateway::start(http, &app("web", port, &["127.0.0.1"], ""));
    // A whole request in time is answered, and the same connection may idle less than the
    // limit between requests.
    let mut h1 = g.h1("web.gw.test").await;
    for _ in 0..2 {
        let resp = h1.send_request(request("GET", "web.gw.test", "/").body(body("")).unwrap());
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(text(resp).await.starts_with("web\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One header line every 200 ms: each read is quick, the header never ends.
    let mut tls = g.tls("web.gw.test", &["http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.gw.test\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tls
            .write_all(format!("x-drip-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), tls.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered a header never finished: {:?}", &b[..n]),
            Err(_) => {}
        }
    }
    assert!(closed, "a 10 s trickle outlived the 1 s header limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_for_routed_names_only() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    http_whoami(ls.remove(0), "web");
    let http = "[proxy.http]\nredirect_listen = \"127.0.0.1:0\"\n";
    let g = HttpGateway::start(http, &app("web", port, &["127.0.0.1"], ""));
    let addr = g.gw.redirect.expect("redirect listener announced");
    let curl = |host: &str, path: &str, method: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-X", method, "-H", &format!("Host: {host}")])
            .args(["-w", "\n%{http_code} %{redirect_url}"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = curl("web.gw.test:80", "/a/b?c=1", "GET");
    assert!(out.ends_with("\n308 https://web.gw.test/a/b?c=1"), "{out}");
    let out = curl("WEB.gw.test", "/", "POST");
    assert!(out.ends_with("\n308 https://web.gw.test/"), "{out}");
    let out = curl("evil.example", "/", "GET");
    assert!(
        out.starts_with("404 ") && out.ends_with("404 "),
        "not an open redirector: {out}"
    );
}
