//! `mode = "http"` through the real binary and real curl: keep-alive HTTP/1.1 and h2
//! connections whose requests spread over two instances, forwarding headers replaced (not
//! appended) with the real client, 421 on a Host that is not the SNI, retry on another
//! instance when one is down, 503 when the app has no instance and 502 when every instance
//! refuses.

use gatehouse_tests::pki::TestCa;
use gatehouse_tests::servers::{bind_same_port, http_whoami};
use gatehouse_tests::{base_config, Gateway};
use std::process::Command;

struct Setup {
    gw: Gateway,
    ca: std::path::PathBuf,
}

async fn setup(extra_apps: &str) -> Setup {
    setup_with(
        &[([127, 0, 0, 1], Some("one")), ([127, 0, 0, 2], Some("two"))],
        extra_apps,
    )
    .await
}

/// App `web` (mode http) with an instance per address, each answering as its name (`None`:
/// nothing listens there), plus `extra_apps`.
async fn setup_with(instances: &[([u8; 4], Option<&'static str>)], extra_apps: &str) -> Setup {
    let ca = TestCa::new();
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
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let config = format!(
        r#"{}
[[apps]]
id = "web"
mode = "http"
default_port = {port}
{listed}
{extra_apps}
[tls]
certificates = [{wild}]
"#,
        base_config("")
    );
    let ca = dir.path().join("ca.pem");
    Setup {
        gw: Gateway::start_in(dir, &config),
        ca,
    }
}

/// curl with `args`, resolving every `*.gw.test` name used to the gateway; stdout, and the
/// HTTP codes (`-w`) on the last line.
fn curl(s: &Setup, host: &str, args: &[&str]) -> String {
    let port = s.gw.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&s.ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_spread_and_carry_forwarding_headers() {
    let s = setup("").await;
    let url = format!("https://web.gw.test:{}/", s.gw.addr.port());
    for version in ["--http1.1", "--http2"] {
        // 12 requests on one connection (curl reuses it for the same host).
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 12).collect();
        let mut args = vec![version, "-H", "X-Forwarded-For: 6.6.6.6"];
        args.extend(urls);
        let body = curl(&s, "web.gw.test", &args);
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
    let port = s.gw.addr.port();
    let web = format!("https://web.gw.test:{port}/");
    let out = curl(
        &s,
        "web.gw.test",
        &["-H", "Host: other.gw.test", "-w", "%{http_code}", &web],
    );
    assert!(out.starts_with("421 misdirected request"), "{out}");
    assert!(out.ends_with("421"), "{out}");

    let down = format!("https://down.gw.test:{port}/");
    let out = curl(&s, "down.gw.test", &["-w", "%{http_code}", &down]);
    assert!(out.starts_with("502 "), "{out}");
    assert!(out.ends_with("502"), "{out}");

    let none = format!("https://none.gw.test:{port}/");
    let out = curl(&s, "none.gw.test", &["-w", "%{http_code}", &none]);
    assert!(out.starts_with("503 no instance"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_retried_elsewhere() {
    // 127.0.0.3: nothing listens there.
    let s = setup_with(
        &[([127, 0, 0, 1], Some("alive")), ([127, 0, 0, 3], None)],
        "",
    )
    .await;
    let url = format!("https://web.gw.test:{}/", s.gw.addr.port());
    for _ in 0..8 {
        let out = curl(&s, "web.gw.test", &["-w", "%{http_code}", &url]);
        assert!(out.starts_with("alive\n") && out.ends_with("200"), "{out}");
    }
}
