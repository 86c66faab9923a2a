//! Issue 21 §3-4 in headless Chromium (Debian's `chromium`, names mapped to loopback, the
//! gateway's CA in its NSS store). A gateway on its development defaults (keys made in the
//! simulated TEE, a local CA) fronts an app whose page embeds the badge widget from
//! `attest.localhost` (with Subresource Integrity); the widget verifies the gateway's bundle
//! in the browser (dcap-qvl's browser code path; the tag trusts the simulator's root
//! explicitly) and shows the simulator's MRTD verified; the same widget handed a tampered
//! bundle shows the failure at its step; the verification page at `https://attest.localhost/`
//! does the same for a typed domain. A configured gateway whose key was imported (not made in
//! the TEE) is shown failed at `keys`. Screenshots are kept in `target/artifacts/` (the
//! README's picture comes from them).

use base64::Engine as _;
use gatehouse_attest::simulator::SimulatorConfig;
use gatehouse_tests::browser::{save_artifact, Browser};
use gatehouse_tests::http::{http_app, HttpGateway};
use gatehouse_tests::origins::{static_site, Files};
use gatehouse_tests::servers::bind;
use gatehouse_tests::Gateway;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BUNDLE: &str = "/.well-known/gatehouse/attestation";
const BADGE: &str = "document.querySelector('[data-gatehouse-badge]')";
/// The development gateway's address (its listeners have fixed ports: a loopback of its own).
const DEV_IP: &str = "127.0.0.77";

/// The badge's state once it has one: {state, failed, text, mrtd, steps}.
fn badge(page: &mut Browser) -> Value {
    page.wait_for(
        &format!("!!{BADGE} && {BADGE}.dataset.state !== 'pending'"),
        "the badge's verdict",
        Duration::from_secs(30),
    );
    page.eval(&format!(
        "(() => {{ const b = {BADGE}; const r = b.gatehouseReport; return {{
            state: b.dataset.state, failed: b.dataset.failed || null,
            text: b.shadowRoot.textContent, mrtd: r.measurements && r.measurements.mrtd,
            steps: Object.fromEntries(r.steps.map((s) => [s.step, s.status])) }}; }})()"
    ))
}

/// `url` fetched with curl trusting `ca` and resolving every name to `ip`; the body.
fn fetch(url: &str, ca: &Path, ip: &str, head: bool) -> String {
    let host_port = url.split('/').nth(2).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--connect-to")
        .arg(format!(
            "{host_port}:{ip}:{}",
            host_port.split(':').nth(1).unwrap()
        ))
        .args(if head { &["-I"][..] } else { &[][..] })
        .arg(url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "{url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The app's page embedding the widget from `widget_src` with integrity `sri`.
fn app_page(widget_src: &str, sri: &str, mrtd: &str, extra: &str) -> hyper::body::Bytes {
    let version = gatehouse_attest::hex::encode(env!("CARGO_PKG_VERSION").as_bytes());
    format!(
        "<!doctype html><html><head><title>Shop</title></head><body>\
         <h1>Shop</h1><p>An app behind Gatehouse, with the attestation badge:</p>\
         <script src=\"{widget_src}\" integrity=\"{sri}\" crossorigin=\"anonymous\" \
         data-mrtd=\"{mrtd}\" data-events=\"gatehouse-version={version}\" \
         data-insecure-trust-simulator-root data-open {extra}></script>\
         </body></html>"
    )
    .into()
}

fn serve(files: &Files, path: &str, ctype: &str, body: impl Into<hyper::body::Bytes>) {
    files
        .lock()
        .unwrap()
        .insert(path.into(), (ctype.into(), body.into()));
}

fn sha384(body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, body);
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_widget_and_page_verify_the_simulated_tee_and_show_a_tampered_bundle_failed() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: scripts/test.sh installs it"
    );
    let origin = bind([127, 0, 0, 1], 0).await.unwrap();
    let origin_addr = origin.local_addr().unwrap().to_string();
    let files = static_site(origin);
    let gw = Gateway::spawn(
        tempfile::tempdir().unwrap(),
        &["run", "--bind", DEV_IP, "--demo-origin", &origin_addr],
    );
    let ca = gw.path().join(".gatehouse/dev-ca.pem");
    let attest = |path: &str| format!("https://attest.localhost:8443{path}");

    // The widget as served, and the integrity an app pins it with (printed at start).
    let sri = sha384(fetch(&attest("/widget.js"), &ca, DEV_IP, false).as_bytes());
    assert!(
        gw.log().contains(&format!(
            "verification page on https://attest.localhost:8443/ (widget {sri})"
        )),
        "the binary prints the page and the widget's integrity at start"
    );
    let head = fetch(&attest("/"), &ca, DEV_IP, true).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );

    // The measurement the tag pins: the simulator's, known independently of the gateway.
    let mrtd = gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd);
    // A tampered bundle: one more key in the claims, as if the host slipped in its own.
    let mut bundle: Value =
        serde_json::from_str(&fetch(&attest(BUNDLE), &ca, DEV_IP, false)).unwrap();
    bundle["claims"]["spki_sha256"]["current"]
        .as_array_mut()
        .unwrap()
        .push(json!("ab".repeat(32)));
    let widget = attest("/widget.js");
    serve(&files, "/", "text/html", app_page(&widget, &sri, &mrtd, ""));
    let tampered = app_page(&widget, &sri, &mrtd, "data-bundle=\"/tampered.json\"");
    serve(&files, "/tampered", "text/html", tampered);
    serve(
        &files,
        "/tampered.json",
        "application/json",
        bundle.to_string(),
    );

    // A configured gateway with an imported key (a test CA's wildcard), fronting the same app.
    let port: u16 = origin_addr.rsplit(':').next().unwrap().parse().unwrap();
    let cfg = HttpGateway::start("", &http_app("shop", port, &["127.0.0.1"], ""));
    let imported = app_page(&cfg.url("attest.gw.test", "/widget.js"), &sri, &mrtd, "");
    serve(&files, "/imported", "text/html", imported);

    let shop = "https://demo.localhost:8443/";
    let (cas, imported) = (
        [ca, cfg.ca_pem.clone()],
        cfg.url("shop.gw.test", "/imported"),
    );
    let mrtd_pin = mrtd.clone();
    tokio::task::block_in_place(move || {
        let mut page = Browser::launch_trusting(
            &[&cas[0], &cas[1]],
            &[&format!(
                "--host-resolver-rules=MAP *.localhost {DEV_IP}, MAP *.gw.test 127.0.0.1"
            )],
        );

        // A window the size of the pictures in the README.
        page.send(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 600, "height": 470, "deviceScaleFactor": 1, "mobile": false }),
        );
        // The app's page: verified, the simulator's MRTD, every step the TEE needs passed.
        page.goto(shop);
        let b = badge(&mut page);
        assert_eq!(b["state"], "verified", "{b}");
        assert_eq!(b["mrtd"], json!(mrtd_pin), "{b}");
        for step in ["quote", "policy", "binding", "keys"] {
            assert_eq!(b["steps"][step], "ok", "{step}: {b}");
        }
        let text = b["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("MRTD {}", &mrtd_pin[..16])),
            "{text}"
        );
        assert!(
            text.contains("SIMULATED TEE"),
            "says it is simulated: {text}"
        );
        assert!(
            text.contains("measurements pinned"),
            "the pin applied: {text}"
        );
        save_artifact(&page.screenshot(), "browser-widget.png");

        // The same widget handed a tampered bundle: red, at the step that caught it.
        page.goto(&format!("{shop}tampered"));
        let b = badge(&mut page);
        assert_eq!(
            (&b["state"], &b["failed"]),
            (&json!("failed"), &json!("binding")),
            "{b}"
        );
        let text = b["text"].as_str().unwrap();
        assert!(text.contains("Attestation failed at binding"), "{text}");
        save_artifact(&page.screenshot(), "browser-widget-tampered.png");

        // A gateway serving a key that was imported, not made in the TEE: red at keys.
        page.goto(&imported);
        let b = badge(&mut page);
        assert_eq!(
            (&b["state"], &b["failed"]),
            (&json!("failed"), &json!("keys")),
            "{b}"
        );
        assert!(
            b["text"]
                .as_str()
                .unwrap()
                .contains("imported, not made in the TEE"),
            "{b}"
        );

        // The verification page: a typed domain and pin; then a pin the TEE does not match.
        page.send(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 900, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        );
        page.goto("https://attest.localhost:8443/");
        let r = page.verify_on_page("demo.localhost", &mrtd_pin);
        assert_eq!(r["state"], "verified", "{r}");
        let source = r["source"].as_str().unwrap();
        assert!(source.contains("attest.localhost"), "{r}");
        assert!(
            r["measurements"].as_str().unwrap().contains(&mrtd_pin),
            "{r}"
        );
        save_artifact(&page.screenshot(), "browser-page.png");
        let wrong = page.verify_on_page("demo.localhost", &"ab".repeat(48));
        assert_eq!(
            (&wrong["state"], &wrong["failed"]),
            (&json!("failed"), &json!("policy")),
            "{wrong}"
        );
        assert!(
            wrong["snippet"].as_str().unwrap().contains(&sri),
            "the page offers the widget's tag with its integrity: {wrong}"
        );
    });
}
