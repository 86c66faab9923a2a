//! The encrypted channel through the real binary (`cargo test encrypted_channel`): the key
//! in the attestation claims, a request sealed to it with a marker string reaches the app
//! through the same checks and headers as any request (plus `gatehouse-channel: ohttp`), and
//! its answer opens with the request's context only. Refused by name: a replay, a tampered
//! ciphertext, an unknown key id, a wrong media type, an app that did not opt in; an inner
//! request for another app gets that app's 421, sealed. The browser package's client half
//! talks to the same gateway from Node. And in headless Chromium, behind a TLS-intercepting
//! proxy the browser trusts: the app's page installs the channel's service worker, a `fetch()`
//! with a marker reaches the app while the proxy's recording never holds it; with the proxy
//! swapping the channel key in the bundles it relays, the worker refuses and the page says so.

use base64::Engine;
use gatehouse_channel::gate::{open_response, seal_request};
use gatehouse_tests::browser::{save_artifact, Browser};
use gatehouse_tests::http::{body, request, text, HttpGateway};
use gatehouse_tests::intercept::Interceptor;
use gatehouse_tests::pki::TestCa;
use gatehouse_tests::servers::bind_same_port;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An app instance that answers with what it received.
fn reflecting(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let h = |k: &str| {
                            req.headers()
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let head = format!(
                            "method={}\npath={}\nhost={}\nchannel={}\nxff={}\ncontent-type={}\n",
                            req.method(),
                            req.uri(),
                            h("host"),
                            h("gatehouse-channel"),
                            h("x-forwarded-for"),
                            h("content-type"),
                        );
                        let got = req.into_body().collect().await.unwrap().to_bytes();
                        let text = format!("{head}body={}\n", String::from_utf8_lossy(&got));
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("x-app", "reflecting")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(text)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn setup() -> HttpGateway {
    let (port, listeners) = bind_same_port(&[[127, 0, 0, 1]]).await;
    for l in listeners {
        reflecting(l);
    }
    let apps = format!(
        "[[apps]]\nid = \"web\"\nmode = \"http\"\ndefault_port = {port}\nencrypted_channel = true\n\
         [[apps.instances]]\naddress = \"127.0.0.1\"\n\
         [[apps]]\nid = \"plain\"\nmode = \"http\"\ndefault_port = {port}\n\
         [[apps.instances]]\naddress = \"127.0.0.1\"\n"
    );
    let s = HttpGateway::start("[proxy.http]\naccess_log = true\n", &apps);
    s.gw.wait_log("encrypted channel on", Duration::from_secs(20));
    s
}

/// An inner request to `authority` with `marker` as its body, dated now.
fn inner(authority: &str, marker: &str) -> bhttp::Message {
    let mut m = bhttp::Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        authority.as_bytes().to_vec(),
        b"/submit?x=1".to_vec(),
    );
    m.put_header(
        "date",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    m.put_header("content-type", "text/plain");
    m.write_content(marker);
    m
}

/// POSTs `sealed` to the channel of `host`: status, content type, body.
async fn post(s: &HttpGateway, host: &str, media: &str, sealed: Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut h1 = s.h1(host).await;
    let resp = h1
        .send_request(
            request("POST", host, "/.well-known/gatehouse/channel")
                .header("content-type", media)
                .body(body(sealed))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, media, bytes)
}

async fn get(s: &HttpGateway, host: &str, path: &str) -> Vec<u8> {
    let mut h1 = s.h1(host).await;
    let resp = h1
        .send_request(request("GET", host, path).body(body("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_channel_carries_a_sealed_request_to_the_app_and_refuses_by_name() {
    let s = setup().await;
    // The key, from the attested claims; the same list is served beside the channel.
    let bundle: serde_json::Value =
        serde_json::from_slice(&get(&s, "web.gw.test", "/.well-known/gatehouse/attestation").await)
            .unwrap();
    let claim = &bundle["claims"]["channel"];
    assert_eq!(claim["path"], "/.well-known/gatehouse/channel", "{bundle}");
    let keys = base64::engine::general_purpose::STANDARD
        .decode(claim["ohttp_keys"].as_str().expect("ohttp_keys"))
        .unwrap();
    assert_eq!(
        get(&s, "web.gw.test", "/.well-known/gatehouse/ohttp-keys").await,
        keys,
        "the served keys are the attested ones"
    );

    // `gatehouse verify` checks the claimed keys after the binding.
    let port = s.gw.addr.port();
    let out = std::process::Command::new(gatehouse_tests::binary())
        .args(["verify", &format!("https://web.gw.test:{port}"), "--cacert"])
        .arg(&s.ca_pem)
        .args([
            "--insecure-trust-simulator-root",
            "--accept-any-measurements",
            "--accept-imported-keys",
        ])
        .args(["--connect", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("✓ channel: current key") && l.contains("X25519")),
        "{said}"
    );

    // A sealed request with a marker reaches the app, with this hop's headers.
    let marker = "marker-7f3a9c";
    let (sealed, context) = seal_request(&keys, &inner("web.gw.test", marker)).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(marker));
    let (status, media, answer) =
        post(&s, "web.gw.test", "message/ohttp-req", sealed.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(media, "message/ohttp-res");
    assert!(
        !String::from_utf8_lossy(&answer).contains(marker),
        "the answer travels sealed"
    );
    let opened = open_response(context, &answer).unwrap();
    assert_eq!(opened.control().status().map(|s| s.code()), Some(200));
    let seen = String::from_utf8_lossy(opened.content()).into_owned();
    for line in [
        "method=POST\n",
        "path=/submit?x=1\n",
        "host=web.gw.test\n",
        "channel=ohttp\n",
        "xff=127.0.0.1\n",
        "content-type=text/plain\n",
        &format!("body={marker}\n"),
    ] {
        assert!(seen.contains(line), "{line:?} in what the app saw:\n{seen}");
    }
    assert_eq!(opened.header().get(b"x-app"), Some(&b"reflecting"[..]));

    // The browser package's client half (web/src/ohttp.js, bhttp.js: @hpke/core and
    // WebCrypto) against the same gateway: what it seals opens here, what comes back opens there.
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let keys_b64 = claim["ohttp_keys"].as_str().unwrap();
    let out = std::process::Command::new("node")
        .current_dir(&web)
        .env("NODE_EXTRA_CA_CERTS", &s.ca_pem)
        .args(["scripts/channel-client.mjs", "web.gw.test"])
        .arg(s.gw.addr.port().to_string())
        .args([keys_b64, "from-node-5e1d"])
        .output()
        .expect("node (installed by ./scripts/test.sh, with web/node_modules)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(node["type"], "message/ohttp-res");
    assert_eq!(node["status"], 200);
    let content = node["content"].as_str().unwrap();
    assert!(
        content.contains("body=from-node-5e1d\n") && content.contains("channel=ohttp\n"),
        "{content}"
    );
    assert!(!node["sealed"].as_str().unwrap().contains("from-node-5e1d"));

    // The same bytes again: a replay.
    let (status, _, why) = post(&s, "web.gw.test", "message/ohttp-req", sealed.clone()).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&why).contains("replayed request"),
        "{}",
        String::from_utf8_lossy(&why)
    );

    // One flipped bit of the ciphertext.
    let (mut tampered, _) = seal_request(&keys, &inner("web.gw.test", marker)).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    let (status, _, why) = post(&s, "web.gw.test", "message/ohttp-req", tampered).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&why).contains("does not open with channel key"));

    // A key id the gateway does not hold.
    let (mut unknown, _) = seal_request(&keys, &inner("web.gw.test", marker)).unwrap();
    unknown[0] = unknown[0].wrapping_add(100);
    let (status, _, why) = post(&s, "web.gw.test", "message/ohttp-req", unknown).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&why).contains("unknown channel key id"));

    // The wrong media type; an app that did not opt in.
    let (fresh, _) = seal_request(&keys, &inner("web.gw.test", marker)).unwrap();
    let (status, _, why) = post(&s, "web.gw.test", "application/octet-stream", fresh.clone()).await;
    assert_eq!(status, 415, "{}", String::from_utf8_lossy(&why));
    let (status, _, why) = post(&s, "plain.gw.test", "message/ohttp-req", fresh).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&why).contains("does not serve the encrypted channel"));

    // An inner request for another app is that connection's misdirected request, sealed.
    let (sealed, context) = seal_request(&keys, &inner("plain.gw.test", marker)).unwrap();
    let (status, _, answer) = post(&s, "web.gw.test", "message/ohttp-req", sealed).await;
    assert_eq!(status, 200);
    let opened = open_response(context, &answer).unwrap();
    assert_eq!(opened.control().status().map(|s| s.code()), Some(421));

    // Only the gateway says a request came through the channel.
    let mut h1 = s.h1("web.gw.test").await;
    let resp = h1
        .send_request(
            request("GET", "web.gw.test", "/plain")
                .header("gatehouse-channel", "ohttp")
                .body(body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let seen = text(resp).await;
    assert!(
        seen.contains("channel=-\n"),
        "a client's claim is dropped:\n{seen}"
    );

    let log = s.gw.log();
    for why in [
        "replayed request",
        "does not open with channel key",
        "unknown channel key id",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("encrypted channel request refused") && l.contains(why)),
            "one log line names {why:?}:\n{log}"
        );
    }
    assert!(!log.contains(marker), "the marker is never logged");
    assert!(
        log.contains("path=(sealed)") && !log.contains("/submit"),
        "the access log keeps the sealed path out:\n{log}"
    );
}

/// The app of the browser test: its page (with the widget, which installs the channel) at
/// `/`, and `POST /echo`, which answers with what it received and keeps it in `seen`.
fn notes_app(listener: tokio::net::TcpListener, page: String, seen: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (page, seen) = (page.clone(), seen.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (page, seen) = (page.clone(), seen.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let channel = req.headers().get("gatehouse-channel").is_some();
                            let got = req.into_body().collect().await.unwrap().to_bytes();
                            let (ctype, body) = match path.as_str() {
                                "/echo" => {
                                    let text = String::from_utf8_lossy(&got).into_owned();
                                    seen.lock()
                                        .unwrap()
                                        .push(format!("{text} channel={channel}"));
                                    ("text/plain", format!("app received: {text}"))
                                }
                                _ => ("text/html", page),
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", ctype)
                                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The badge's channel row state (`sealed`, `pending`, `failed`), once it has one.
const CHANNEL_STATE: &str = "(() => { const b = document.querySelector('[data-gatehouse-badge]'); \
                             return b && b.dataset.channel; })()";

/// Loads `url`, waits for the badge to install the channel's worker and for the worker to be
/// active, and loads it again (now controlled by the worker).
fn install_and_reload(browser: &mut Browser, url: &str) {
    browser.goto(url);
    browser.wait_for(
        &format!("!!{CHANNEL_STATE}"),
        "the channel state",
        Duration::from_secs(30),
    );
    browser.wait_for(
        "navigator.serviceWorker.ready.then(() => true)",
        "the channel worker active",
        Duration::from_secs(30),
    );
    browser.goto(url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_channel_in_chromium_past_a_recording_tls_proxy_and_a_swapped_key_refused() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: scripts/test.sh installs it"
    );
    let (port, listeners) = bind_same_port(&[[127, 0, 0, 1]]).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let apps = format!(
        "[[apps]]\nid = \"notes\"\nmode = \"http\"\ndefault_port = {port}\nencrypted_channel = true\n\
         [[apps.instances]]\naddress = \"127.0.0.1\"\n"
    );
    let s = HttpGateway::start("", &apps);
    s.gw.wait_log("encrypted channel on", Duration::from_secs(20));
    // Between the browser and the gateway: an intercepting proxy whose CA the browser trusts.
    let company = TestCa::new();
    let proxy = Interceptor::start(
        s.gw.addr,
        s.ca.client(&["http/1.1"]),
        &company,
        &["notes.gw.test", "attest.gw.test"],
    )
    .await;
    let company_pem = s.ca_pem.with_file_name("company-ca.pem");
    std::fs::write(&company_pem, &company.pem).unwrap();
    let at = |host: &str, path: &str| format!("https://{host}:{}{path}", proxy.addr.port());
    let mrtd = gatehouse_attest::hex::encode(
        &gatehouse_attest::simulator::SimulatorConfig::default().mrtd,
    );
    let page = format!(
        "<!doctype html><html><head><title>Notes</title></head><body><h1>Notes</h1>\
         <script src=\"{}\" data-channel data-mrtd=\"{mrtd}\" \
         data-insecure-trust-simulator-root data-open></script>\
         <script>async function send(m) {{ const r = await fetch('/echo', {{method: 'POST', body: m}}); \
         return {{status: r.status, via: r.headers.get('x-gatehouse-channel'), text: await r.text()}}; }}</script>\
         </body></html>",
        at("attest.gw.test", "/widget.js")
    );
    for l in listeners {
        notes_app(l, page.clone(), seen.clone());
    }
    let marker = "secret-note-4c1f2e";
    let rules = format!(
        "--host-resolver-rules=MAP *.gw.test 127.0.0.1:{}",
        proxy.addr.port()
    );
    let notes = at("notes.gw.test", "/");
    let proxy = Arc::new(proxy);
    let p = proxy.clone();
    tokio::task::block_in_place(move || {
        let mut browser = Browser::launch_trusting(&[&company_pem], &[&rules]);
        // The first load installs the worker (its own requests went over TLS only)...
        install_and_reload(&mut browser, &notes);
        // ...from the next, the page and its requests are sealed to the TEE.
        browser.wait_for(
            &format!("{CHANNEL_STATE} === 'sealed'"),
            "the badge saying the requests are sealed",
            Duration::from_secs(30),
        );
        let r = browser.eval(&format!("send('{marker}')"));
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["via"], "sealed", "{r}");
        assert_eq!(r["text"], format!("app received: {marker}"), "{r}");
        save_artifact(&browser.screenshot(), "encrypted-channel.png");
        // The proxy relayed the channel, and never saw the marker, either way.
        assert!(
            p.saw("message/ohttp-req"),
            "the traffic went through the proxy"
        );
        assert!(!p.saw(marker), "the marker crossed the proxy in clear");

        // Now the proxy swaps the channel key in the bundles it relays for one of its own: a
        // fresh browser's worker refuses it (the quote does not bind it) and sends nothing.
        p.swap_channel_key
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(browser);
        let mut browser = Browser::launch_trusting(&[&company_pem], &[&rules]);
        install_and_reload(&mut browser, &notes);
        browser.wait_for(
            "!!document.getElementById('gatehouse-channel-failed')",
            "the failure page",
            Duration::from_secs(30),
        );
        let step = browser.eval("document.getElementById('gatehouse-channel-failed').dataset.step");
        assert_eq!(step, "binding");
        let text = browser.eval("document.body.textContent");
        assert!(
            text.as_str()
                .unwrap()
                .contains("Nothing was sent in plain text"),
            "{text}"
        );
        save_artifact(&browser.screenshot(), "encrypted-channel-swapped-key.png");
    });
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|s| s == &format!("{marker} channel=true")),
        "the app received the marker through the channel: {seen:?}"
    );
}
