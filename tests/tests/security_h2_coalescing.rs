//! Issue 16 §2 with a real browser: HTTP/2 connection coalescing must not hand one app's
//! requests to another. Apps `evil` and `bank` (tcp mode, h2c instances) sit behind one
//! wildcard certificate; a page served through `evilg.gw.test` embeds an image from
//! `bankg.gw.test`. Chromium may reuse the `evilg` connection for it (same certificate, same
//! address); the gateway checks each request's `:authority` against the connection's name, so
//! the image request never reaches evil's instance, and reaches bank's.

use gatehouse_tests::browser::trust_in_nss;
use gatehouse_tests::pki::TestCa;
use gatehouse_tests::servers::bind;
use gatehouse_tests::{base_config, Gateway};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

type Seen = Arc<Mutex<Vec<String>>>;

/// An h2c origin (prior knowledge) that records `authority path` of every request and answers
/// `page` at `/`, a small body elsewhere.
fn h2c_origin(listener: TcpListener, page: String, seen: Seen) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (page, seen) = (page.clone(), seen.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            let host = req.headers().get("host")?;
                            Some(host.to_str().ok()?.to_owned())
                        })
                        .unwrap_or_default();
                    let path = req.uri().path().to_owned();
                    seen.lock().unwrap().push(format!("{authority} {path}"));
                    let (ctype, body) = match path.as_str() {
                        "/" => ("text/html", page.clone()),
                        _ => ("text/plain", "pixel".to_owned()),
                    };
                    let resp = Response::builder()
                        .header("content-type", ctype)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_h2_coalescing_never_reaches_another_app() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: scripts/test.sh installs it"
    );
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem).unwrap();

    let evil = bind([127, 0, 0, 1], 0).await.unwrap();
    let bank = bind([127, 0, 0, 2], 0).await.unwrap();
    let (evil_port, bank_port) = (
        evil.local_addr().unwrap().port(),
        bank.local_addr().unwrap().port(),
    );
    let config = format!(
        "{}\n[[apps]]\nid = \"evil\"\ndefault_port = {evil_port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n\
         [[apps]]\nid = \"bank\"\ndefault_port = {bank_port}\n[[apps.instances]]\naddress = \"127.0.0.2\"\n\
         [tls]\ncertificates = [{wild}]\n",
        base_config("")
    );
    let gw = Gateway::start_in(dir, &config);
    let port = gw.addr.port();
    let (evil_seen, bank_seen) = (Seen::default(), Seen::default());
    let page = format!(
        "<html><body><p>evil</p><img src=\"https://bankg.gw.test:{port}/pixel\"></body></html>"
    );
    h2c_origin(evil, page, evil_seen.clone());
    h2c_origin(bank, String::new(), bank_seen.clone());

    let home = tempfile::tempdir().unwrap();
    trust_in_nss(home.path(), &[&ca_pem]);
    let url = format!("https://evilg.gw.test:{port}/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "60",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
            ])
            .arg("--host-resolver-rules=MAP *.gw.test 127.0.0.1")
            .args(["--virtual-time-budget=5000", "--dump-dom", &url])
            .env("HOME", home.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("evil"), "the page loaded: {dom}\n{out:?}");

    let evil_seen = evil_seen.lock().unwrap().clone();
    let bank_seen = bank_seen.lock().unwrap().clone();
    assert!(
        evil_seen.iter().all(|r| r.starts_with("evilg.gw.test")),
        "evil's instance got another app's request: {evil_seen:?}"
    );
    assert!(
        bank_seen.iter().any(|r| r.ends_with("/pixel")),
        "the image request reached bank: {bank_seen:?} (evil saw {evil_seen:?})"
    );
    let log = gw.log();
    println!(
        "evil saw {evil_seen:?}; bank saw {bank_seen:?}; 421s: {}",
        log.matches(" 421").count()
    );
}
