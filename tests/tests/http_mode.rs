//! `mode = "http"` through the real binary and real curl: keep-alive HTTP/1.1 and h2
//! connections whose requests spread over two instances, forwarding headers replaced (or
//! appended, when configured) with the real client, 421 on a Host that is not the SNI, retry
//! on another instance when one is down, 503 when the app has no instance and 502 when every
//! instance refuses, the access log and the per-app request metrics.

use gatehouse_tests::http::HttpGateway;
use gatehouse_tests::servers::{bind_same_port, http_whoami};

async fn setup(extra_apps: &str) -> HttpGateway {
    setup_with(
        &[([127, 0, 0, 1], Some("one")), ([127, 0, 0, 2], Some("two"))],
        "",
        extra_apps,
    )
    .await
}

/// App `web` (mode http) with an instance per address, each answering as its name (`None`:
/// nothing listens there), plus `proxy_extra` in `[proxy]` and `extra_apps`.
async fn setup_with(
    instances: &[([u8; 4], Option<&'static str>)],
    proxy_extra: &str,
    extra_apps: &str,
) -> HttpGateway {
    let ips: Vec<[u8; 4]> = instances.iter().map(|(ip, _)| *ip).collect();
    let (port, listeners) = bind_same_port(&ips).await;
    let mut listed = String::new();
    for ((ip, name), listener) in instances.iter().zip(listeners) {
        match name {
            Some(name) => http_whoami(listener, name),
            None => drop(listener),
        }
        let [a, b, c, d] = ip;
        listed += &format!("[[apps.instances]]\naddress = \"{a}.{b}.{c}.{d}\"\n");
    }
    let apps = format!(
        "[[apps]]\nid = \"web\"\nmode = \"http\"\ndefault_port = {port}\n{listed}\n{extra_apps}"
    );
    HttpGateway::start(proxy_extra, &apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_spread_and_carry_forwarding_headers() {
    let s = setup("").await;
    let url = s.url("web.gw.test", "/");
    for version in ["--http1.1", "--http2"] {
        // 12 requests on one connection (curl reuses it for the same host).
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 12).collect();
        let mut args = vec![version, "-H", "X-Forwarded-For: 6.6.6.6"];
        args.extend(urls);
        let body = s.curl("web.gw.test", &args);
        let ones = body.matches("one\n").count();
        let twos = body.matches("two\n").count();
        assert_eq!(ones + twos, 12, "{version}: {body}");
        assert!(
            ones > 0 && twos > 0,
            "{version}: per-request balancing: {body}"
        );
        assert!(
            body.contains("xff=127.0.0.1\n"),
            "{version}: the client's X-Forwarded-For is replaced: {body}"
        );
        assert!(body.contains("xfp=https\n") && body.contains("xfh=web.gw.test\n"));
        assert!(body.contains("forwarded=for=127.0.0.1;host=web.gw.test;proto=https\n"));
        let via = if version == "--http2" {
            "via=2 gatehouse"
        } else {
            "via=1.1 gatehouse"
        };
        assert!(body.contains(via), "{version}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_gets_421_and_failures_have_short_bodies() {
    // `down` has one instance that refuses connections; `none` has no instance at all.
    let s = setup(
        r#"
[[apps]]
id = "down"
mode = "http"
default_port = 1
[[apps.instances]]
address = "127.0.0.1"

[[apps]]
id = "none"
mode = "http"
"#,
    )
    .await;
    // Both request paths: hyper's (HTTP/1.1) and Pingora's (h2).
    for version in ["--http1.1", "--http2"] {
        let web = s.url("web.gw.test", "/");
        let out = s.curl(
            "web.gw.test",
            &[
                version,
                "-H",
                "Host: other.gw.test",
                "-w",
                "%{http_code}",
                &web,
            ],
        );
        assert!(
            out.starts_with("421 misdirected request"),
            "{version}: {out}"
        );
        assert!(out.ends_with("421"), "{version}: {out}");

        let down = s.url("down.gw.test", "/");
        let out = s.curl("down.gw.test", &[version, "-w", "%{http_code}", &down]);
        assert!(out.starts_with("502 "), "{version}: {out}");
        assert!(out.ends_with("502"), "{version}: {out}");

        let none = s.url("none.gw.test", "/");
        let out = s.curl("none.gw.test", &[version, "-w", "%{http_code}", &none]);
        assert!(out.starts_with("503 no instance"), "{version}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_retried_elsewhere() {
    // 127.0.0.3: nothing listens there.
    let s = setup_with(
        &[([127, 0, 0, 1], Some("alive")), ([127, 0, 0, 3], None)],
        "",
        "",
    )
    .await;
    let url = s.url("web.gw.test", "/");
    for version in ["--http1.1", "--http2"] {
        for _ in 0..8 {
            let out = s.curl("web.gw.test", &[version, "-w", "%{http_code}", &url]);
            assert!(
                out.starts_with("alive\n") && out.ends_with("200"),
                "{version}: {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_mode_access_log_and_per_app_metrics() {
    let http = "[proxy.http]\nforwarded = \"append\"\naccess_log = true\n";
    let s = setup_with(&[([127, 0, 0, 1], Some("one"))], http, "").await;
    let url = s.url("web.gw.test", "/some/path?secret=1");
    // Both request paths: hyper's (HTTP/1.1) and Pingora's (h2) log and count alike.
    for version in ["--http1.1", "--http2"] {
        let body = s.curl(
            "web.gw.test",
            &[
                version,
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                &url,
            ],
        );
        assert!(
            body.contains("xff=6.6.6.6, 127.0.0.1\n"),
            "{version}: appended: {body}"
        );
        assert!(
            body.contains("forwarded=for=6.6.6.6, for=127.0.0.1;host=web.gw.test;proto=https\n"),
            "{version}: {body}"
        );
        let foreign = s.curl("web.gw.test", &[version, "-H", "Host: x.gw.test", &url]);
        assert!(foreign.starts_with("421 "), "{version}: {foreign}");
    }

    s.gw.wait_log("HTTP/2.0", std::time::Duration::from_secs(5));
    let log = s.gw.log();
    for version in ["HTTP/1.1", "HTTP/2.0"] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("gatehouse::access") && l.contains(version) && l.contains("status=200")
            })
            .unwrap_or_else(|| panic!("no {version} access line in {log}"));
        for field in [
            "app=web",
            "method=GET",
            "path=/some/path",
            "status=200",
            "instance=127.0.0.1",
            "attempts=1",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    assert!(
        !s.gw.log().contains("secret=1"),
        "the query string is never logged"
    );
    let m = s.gw.metrics();
    assert!(
        m.contains("gatehouse_http_requests_total{app=\"web\",class=\"2xx\"} 2\n"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_http_requests_total{app=\"web\",class=\"4xx\"} 2\n"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_http_request_duration_seconds_count{app=\"web\"} 4\n"),
        "{m}"
    );
}
