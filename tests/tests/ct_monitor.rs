//! The Certificate Transparency watch end to end (issue 21 §2): Pebble issues the gateway's
//! certificate (DNS-01 through Knot), a second ACME account issues a rogue certificate for
//! the same name, both are logged in a local server speaking Cert Spotter's and crt.sh's
//! APIs; the gateway raises exactly one alert naming the rogue serial (log line, metric,
//! webhook, `ct` status in the quoted claims), keeps its cursor across a restart, and says
//! `stale` while its sources are down. In Chromium the verification page says the domain's
//! keys are attested (CT clean, CAA locked) before the rogue certificate, and fails at `ct`
//! after it. An operator resolves the alert through the admin API and the claims are clean.

use gatehouse_attest::simulator::SimulatorConfig;
use gatehouse_certbot::keys::KeyType;
use gatehouse_certbot::order::{Request, Solver};
use gatehouse_tests::acme_env::{acme_config, client, connect, echo_app, one_app, wait_metric};
use gatehouse_tests::admin::{call, conforms, openapi};
use gatehouse_tests::browser::{save_artifact, Browser};
use gatehouse_tests::ct_log::CtLog;
use gatehouse_tests::knot::{Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use gatehouse_tests::Gateway;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bundle served at `attest.gw.test`, through curl with Pebble's root.
fn bundle(gw: &Gateway, root: &Path) -> serde_json::Value {
    let port = gw.addr.port();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("attest.gw.test:{port}:127.0.0.1")])
        .arg(format!(
            "https://attest.gw.test:{port}/.well-known/gatehouse/attestation"
        ))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bundle: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until the quoted claims carry CT status `want`; returns the `ct` claim.
fn wait_status(gw: &Gateway, root: &Path, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ct = bundle(gw, root)["claims"]["ct"].clone();
        if ct["status"] == want {
            return ct;
        }
        assert!(
            Instant::now() < deadline,
            "CT status stayed {ct} (want {want}):\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A second ACME account (its own store) orders `name` by DNS-01 through Knot: what an
/// attacker who can write the zone, or another tenant of the CA, would get.
async fn rogue_certificate(pebble: &Pebble, knot: &Knot, key: &TsigSecret, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = gatehouse_store::Embedded::open(&dir.path().join("rogue.redb")).unwrap();
    let sealer =
        gatehouse_store::AesGcmSealer::load_or_create(&dir.path().join("seal.key")).unwrap();
    let settings = gatehouse_certbot::AccountSettings {
        directory: pebble.directory.clone(),
        contact: vec!["mailto:rogue@elsewhere.test".into()],
        ca_file: Some(pebble.api_ca.clone()),
        eab: None,
    };
    let (account, _) = gatehouse_certbot::account::load_or_create(&settings, &store, &sealer)
        .await
        .unwrap();
    let dns = gatehouse_tests::knot::rfc2136(knot, &["test"], key);
    let solver = Solver::Dns01 {
        provider: Arc::new(dns),
        authoritative: Some(vec![knot.addr]),
        resolvers: vec![knot.addr],
        timeout: Duration::from_secs(10),
    };
    let names = [name.to_owned()];
    let issued = gatehouse_certbot::order::issue(
        &account,
        &solver,
        Request {
            names: &names,
            key_type: KeyType::EcdsaP256,
            profile: None,
            replaces: None,
        },
        gatehouse_certbot::pending::SavePending {
            id: "rogue",
            store: &store,
            sealer: &sealer,
        },
    )
    .await
    .unwrap();
    issued.chain[0].to_vec()
}

fn serial_hex(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let s: String = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    s
}

#[test]
fn ct_monitor_alerts_once_for_a_rogue_certificate_keeps_its_cursor_and_is_stale_while_down() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let ct = CtLog::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    let root = dir.path().join("pebble-root.pem");
    let app = echo_app();
    let mut config = acme_config(
        &pebble,
        &knot,
        &key_file,
        &one_app("web", app.port()),
        "set_caa = true",
    );
    config += &format!(
        "[ct]\nsources = [\"certspotter\", \"crtsh\"]\ncertspotter_url = \"{url}\"\n\
         crtsh_url = \"{url}\"\ninterval = \"1s\"\nstale_after = \"3s\"\n\
         webhook = \"{url}/webhook\"\n",
        url = ct.url
    );
    let gw = Gateway::start_in(dir, &config);
    wait_metric(
        &gw,
        "gatehouse_acme_certificates_issued_total",
        1,
        Duration::from_secs(90),
    );
    let pebble_root = pebble.issuing_root();
    std::fs::write(&root, &pebble_root).unwrap();

    // Our certificate, as served, is logged: the status is clean (its key entered our CSR).
    let (_tls, ours) = connect(gw.addr, "web.gw.test", client(&pebble_root));
    ct.log(&ours);
    let claim = wait_status(&gw, &root, "clean");
    assert!(claim["checked_at"].as_u64().is_some(), "{claim}");
    assert_eq!(gw.metric("gatehouse_ct_alerts"), 0);

    // In a browser (the verification page at attest.gw.test, Pebble's root trusted): with CT
    // clean and CAA locked to our account, every step passes: the domain's keys are attested.
    let mrtd = gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd);
    let page_url = format!("https://attest.gw.test:{}/", gw.addr.port());
    let mut page =
        Browser::launch_trusting(&[&root], &["--host-resolver-rules=MAP *.gw.test 127.0.0.1"]);
    page.goto(&page_url);
    let r = page.verify_on_page("web.gw.test", &mrtd);
    assert_eq!(r["state"], "attested", "{r}");
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("The keys of web.gw.test are attested"),
        "{text}"
    );
    assert!(text.contains("issuance locked to https://"), "CAA: {text}");
    save_artifact(&page.screenshot(), "browser-page-attested.png");

    // Both sources down: stale, never clean, once stale_after passes.
    ct.set_down(true);
    wait_status(&gw, &root, "stale");
    assert_eq!(gw.metric("gatehouse_ct_stale"), 1);
    let log = gw.log();
    assert!(
        log.contains("CT watch: certspotter: GET") && log.contains("503"),
        "{log}"
    );
    ct.set_down(false);
    wait_status(&gw, &root, "clean");

    // A rogue certificate for the same name, from another account: one alert, by serial,
    // though both sources report it (crt.sh as a download, Cert Spotter as an issuance).
    let rogue = rt.block_on(rogue_certificate(&pebble, &knot, &key, "web.gw.test"));
    let serial = serial_hex(&rogue);
    ct.log(&rogue);
    wait_metric(&gw, "gatehouse_ct_alerts", 1, Duration::from_secs(30));
    let claim = wait_status(&gw, &root, "alert");
    assert_eq!(claim["alerts"], serde_json::json!([serial]), "{claim}");
    std::thread::sleep(Duration::from_millis(2500)); // more rounds: nothing raised again
    assert_eq!(gw.metric("gatehouse_ct_alerts"), 1);
    assert_eq!(gw.metric("gatehouse_ct_alerts_raised_total"), 1);
    // The page now names the failing step: a foreign key was logged for the name.
    page.goto(&page_url);
    let r = page.verify_on_page("web.gw.test", &mrtd);
    assert_eq!(
        (&r["state"], &r["failed"]),
        (&json!("failed"), &json!("ct")),
        "{r}"
    );
    assert!(r["text"].as_str().unwrap().contains(&serial), "{r}");
    drop(page);
    let alert_lines: Vec<String> = gw
        .log()
        .lines()
        .filter(|l| l.contains("CT ALERT"))
        .map(str::to_owned)
        .collect();
    assert_eq!(alert_lines.len(), 1, "{alert_lines:?}");
    assert!(alert_lines[0].contains(&serial), "{}", alert_lines[0]);
    let hooks = ct.state.webhooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["event"], "ct_alert");
    assert_eq!(hooks[0]["serial"], serial.as_str());
    assert_eq!(hooks[0]["dns_names"], serde_json::json!(["web.gw.test"]));

    // A restart: the stored alert stays, the cursors continue where they were.
    let asked_before = ct.cursors_asked().len();
    let gw = gw.restart();
    gw.wait_log("CT watch on", Duration::from_secs(30));
    let claim = wait_status(&gw, &root, "alert");
    assert_eq!(claim["alerts"], serde_json::json!([serial]));
    let after_restart = ct.cursors_asked()[asked_before..].to_vec();
    assert!(!after_restart.is_empty());
    assert!(
        after_restart.iter().all(|c| c.as_deref() == Some("1001")),
        "every issuance request after the restart continues after the last entry: {after_restart:?}"
    );
    assert_eq!(
        gw.metric("gatehouse_ct_alerts_raised_total"),
        0,
        "nothing raised twice"
    );
    assert_eq!(ct.state.webhooks.lock().unwrap().len(), 1);

    // An operator deals with it (revokes the certificate, say) and resolves the alert through
    // the admin API, with a note: the claims are clean again, and it is not raised again.
    let admin = gw.admin.expect("an admin listener");
    let doc = openapi();
    let view = call(admin, "GET", "/v1/ct", None, None);
    conforms(&doc, "GET", "/v1/ct", &view);
    assert_eq!(view.body["alerts"][0]["logged"]["serial"], serial.as_str());
    let path = format!("/v1/ct/alerts/{serial}/resolve");
    let no_note = call(admin, "POST", &path, None, Some(&json!({})));
    assert_eq!(no_note.status, 400, "{:?}", no_note.body);
    conforms(&doc, "POST", "/v1/ct/alerts/{serial}/resolve", &no_note);
    let note = json!({ "note": "revoked at the CA" });
    let unknown = call(admin, "POST", "/v1/ct/alerts/00/resolve", None, Some(&note));
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
    let done = call(admin, "POST", &path, None, Some(&note));
    assert_eq!(done.status, 200, "{:?}", done.body);
    conforms(&doc, "POST", "/v1/ct/alerts/{serial}/resolve", &done);
    wait_status(&gw, &root, "clean");
    std::thread::sleep(Duration::from_millis(2500)); // more rounds: nothing raised again
    assert_eq!(gw.metric("gatehouse_ct_alerts"), 0);
    assert_eq!(gw.metric("gatehouse_ct_alerts_raised_total"), 0);
    let view = call(admin, "GET", "/v1/ct", None, None);
    conforms(&doc, "GET", "/v1/ct", &view);
    assert_eq!(view.body["resolved"][0]["note"], "revoked at the CA");
    assert_eq!(view.body["alerts"], json!([]));
    assert!(gw.log().contains("CT alert resolved"), "{}", gw.log());
}
