//! ACME end to end: the real gatehouse binary, Debian's Pebble as the CA, Knot as the DNS
//! server Pebble resolves through and the gateway updates (RFC 2136 + TSIG).

use gatehouse_tests::acme_env::{
    acme_config, alpn_config, client, connect, echo_app, one_app, serve_each, wait_metric,
};
use gatehouse_tests::knot::{free_port, Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use gatehouse_tests::pki::peer_names;
use gatehouse_tests::Gateway;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// An HTTP/1.1 app answering every request with `hello from web`.
fn http_app() -> SocketAddr {
    serve_each(|mut s| {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let body = "hello from web";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

fn account_uri(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("ACME account created") || l.contains("ACME account restored"))
        .expect("account line");
    let field = line
        .split("uri=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    field.trim_matches('"').to_owned()
}

const ISSUED: &str = "gatehouse_acme_certificates_issued_total";

#[test]
fn wildcard_by_dns01_is_served_locked_by_caa_and_reused_after_a_restart() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    // Pebble's default 5 % nonce rejection stays on here: the client must retry.
    let pebble = Pebble::start(&PebbleOptions {
        reject_nonces: true,
        ..PebbleOptions::new(knot.addr)
    });
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    let app = http_app();
    let apps = one_app("web", app.port());
    let config = acme_config(
        &pebble,
        &knot,
        &key_file,
        &apps,
        "set_caa = true\ncaa_check_interval = \"1s\"",
    );
    let gw = Gateway::start_in(dir, &config);
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(90));
    let log = gw.log();
    let uri = account_uri(&log);
    assert!(
        uri.starts_with(&pebble.directory.replace("/dir", "/")),
        "{uri}"
    );
    assert!(
        log.contains("SIMULATED SEALING"),
        "the simulated TEE's sealer says so loudly"
    );

    // curl, trusting only Pebble's issuing root, through the gateway to the app
    let root = pebble.issuing_root();
    let root_file = gw.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let port = gw.addr.port();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            root_file.to_str().unwrap(),
        ])
        .args(["--resolve", &format!("web.gw.test:{port}:127.0.0.1")])
        .arg(format!("https://web.gw.test:{port}/"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from web",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tls, leaf) = connect(gw.addr, "web.gw.test", client(&root));
    let mut names = peer_names(&tls.conn);
    names.sort();
    assert_eq!(names, vec!["*.gw.test", "gw.test"]);
    drop(tls);

    // set_caa wrote records that lock gw.test to this account, as a CA would read them
    let checker =
        gatehouse_caa::lookup::Checker::new(&[knot.addr], Duration::from_secs(2)).unwrap();
    let policy = gatehouse_caa::Policy {
        issuers: vec!["letsencrypt.org".into()],
        accounts: vec![uri.clone()],
        methods: vec!["dns-01".into()],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for name in ["gw.test", "*.gw.test", "web.gw.test"] {
        let v = rt.block_on(checker.check(name, &policy));
        assert_eq!(v, gatehouse_caa::Verdict::Locked, "{name}");
    }
    // `gatehouse verify` from the outside: the bundle claims this account, and CAA (read from
    // Knot) locks the base domain and its wildcard to it; a verifier expecting another CA
    // fails at the CAA step (exit 14).
    let verify = |issuer: &str| {
        std::process::Command::new(gatehouse_tests::binary())
            .arg("verify")
            .arg(format!("https://web.gw.test:{port}"))
            .args(["--connect", &gw.addr.to_string()])
            .args(["--cacert", root_file.to_str().unwrap()])
            .args([
                "--dns-server",
                &knot.addr.to_string(),
                "--caa-issuer",
                issuer,
            ])
            .args([
                "--insecure-trust-simulator-root",
                "--accept-any-measurements",
            ])
            .output()
            .unwrap()
    };
    let ok = verify("letsencrypt.org");
    let report = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        report.contains("✓ certificate")
            && report.contains(&format!("✓ caa: 1 domain(s) locked to {uri}")),
        "{report}"
    );
    let bundle_file = gw.path().join("bundle.json");
    let saved = std::process::Command::new(gatehouse_tests::binary())
        .arg("verify")
        .arg(format!("https://web.gw.test:{port}"))
        .args(["--connect", &gw.addr.to_string()])
        .args(["--cacert", root_file.to_str().unwrap()])
        .args(["--dns-server", &knot.addr.to_string()])
        .args([
            "--insecure-trust-simulator-root",
            "--accept-any-measurements",
        ])
        .arg("--save")
        .arg(&bundle_file)
        .output()
        .unwrap();
    assert_eq!(saved.status.code(), Some(0));
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle_file).unwrap()).unwrap();
    assert_eq!(bundle["claims"]["acme_account_uri"], uri.as_str());
    let caa = bundle["claims"]["caa"].to_string();
    assert!(
        caa.contains("gw.test: locked"),
        "the gateway's own CAA verdicts: {caa}"
    );
    let other = verify("other-ca.example");
    assert_eq!(
        other.status.code(),
        Some(14),
        "{}",
        String::from_utf8_lossy(&other.stdout)
    );

    // the challenge record was cleaned up
    let txt = std::process::Command::new("kdig")
        .args([
            "+short",
            &format!("@{}", knot.addr.ip()),
            "-p",
            &knot.addr.port().to_string(),
        ])
        .args(["TXT", "_acme-challenge.gw.test"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&txt.stdout).trim().is_empty(),
        "challenge TXT left behind"
    );

    // no key in the clear anywhere in the state directory
    let state = gw.path().join("state");
    for entry in std::fs::read_dir(&state).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "a PEM key in the state"
        );
    }

    // Killed and restarted: the stored certificate is served at once, no new order, same account.
    let gw = gw.restart();
    let (_tls, leaf_again) = connect(gw.addr, "web.gw.test", client(&root));
    assert_eq!(leaf_again, leaf, "the sealed certificate is reused");
    let log = gw.wait_log("ACME account restored", Duration::from_secs(30));
    assert_eq!(account_uri(&log), uri, "same account URI (CAA stays valid)");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gw.metric(ISSUED), 0, "no new order:\n{}", gw.log());
    assert!(gw.log().contains("serving the stored certificate"));
    gw.wait_log("CAA re-checked", Duration::from_secs(10));
    assert_eq!(gw.metric("gatehouse_caa_not_locked"), 0, "{}", gw.metrics());

    // Someone adds another CA at the apex: the periodic re-check sees the drift.
    let dns = gatehouse_tests::knot::rfc2136(&knot, &["test"], &key);
    let foreign = gatehouse_caa::CaaRecord::new(0, "issue", "someca.example");
    rt.block_on(gatehouse_dns::DnsProvider::apply_caa(
        &dns,
        "gw.test",
        &[gatehouse_caa::plan::Step::Add(foreign)],
    ))
    .unwrap();
    wait_metric(&gw, "gatehouse_caa_drift_total", 1, Duration::from_secs(10));
    assert!(gw.metric("gatehouse_caa_not_locked") >= 1);
    gw.wait_log("CAA changed", Duration::from_secs(5));
}

#[test]
fn custom_domain_by_tls_alpn01_is_answered_by_the_gateway_listener_with_eab() {
    let knot = Knot::start("test", &["shop.gw 60 A 127.0.0.1"]);
    let port = free_port();
    // The CA requires external account binding; the key is handed out base64url.
    let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start(&PebbleOptions {
        tls_port: port,
        eab: Some(("kid-1".into(), hmac.into())),
        ..PebbleOptions::new(knot.addr)
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("eab.key"), format!("{hmac}\n")).unwrap();
    let app = http_app();
    let config = alpn_config(
        &pebble,
        &knot,
        port,
        app.port(),
        "\"shop.gw.test\"",
        "eab_kid = \"kid-1\"\neab_hmac_key_file = \"eab.key\"",
    );
    let gw = Gateway::start_in(dir, &config);
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    assert!(
        pebble.log().contains("kid-1"),
        "the account was bound with EAB"
    );
    assert!(
        gw.metric("gatehouse_acme_tls_alpn_answered_total") >= 1,
        "Pebble validated through our listener"
    );
    assert!(gw.log().contains("answered a TLS-ALPN-01 validation"));
    let (mut tls, _) = connect(gw.addr, "shop.gw.test", client(&pebble.issuing_root()));
    assert_eq!(peer_names(&tls.conn), vec!["shop.gw.test"]);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.gw.test\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = tls.read_to_string(&mut body);
    assert!(body.ends_with("hello from web"), "{body}");
}

#[test]
fn a_failing_caa_lookup_refuses_the_order() {
    // gw.test is delegated inside Knot to a zone without a file: every answer is SERVFAIL.
    let knot = Knot::start_with("test", &[], &["gw.test"]);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, TsigSecret::random("k").secret_b64).unwrap();
    let config = acme_config(&pebble, &knot, &key_file, "", "");
    let gw = Gateway::start_in(dir, &config);
    wait_metric(
        &gw,
        "gatehouse_acme_caa_refused_total",
        1,
        Duration::from_secs(30),
    );
    let log = gw.log();
    assert!(
        log.contains("CAA check refused the order for gw.test: UNKNOWN"),
        "one line naming the cause:\n{log}"
    );
    assert_eq!(gw.metric(ISSUED), 0);
    assert!(
        !pebble.log().contains("Added order"),
        "no order reached the CA"
    );
}

#[test]
fn a_short_lived_certificate_is_renewed_while_a_connection_stays_open() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let pebble = Pebble::start(&PebbleOptions {
        validity_secs: Some(15),
        ..PebbleOptions::new(knot.addr)
    });
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    let echo = echo_app();
    let apps = one_app("echo", echo.port());
    let gw = Gateway::start_in(dir, &acme_config(&pebble, &knot, &key_file, &apps, ""));
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    let root = pebble.issuing_root();
    let (mut held, first) = connect(gw.addr, "echo.gw.test", client(&root));
    held.write_all(b"before ").unwrap();

    wait_metric(&gw, ISSUED, 2, Duration::from_secs(60));
    let (_fresh, second) = connect(gw.addr, "echo.gw.test", client(&root));
    assert_ne!(first, second, "new connections get the renewed certificate");

    // the connection opened under the first certificate still relays
    held.write_all(b"after").unwrap();
    let mut got = vec![0u8; b"before after".len()];
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"before after");
    assert!(gw.log().contains("next renewal"));
}

/// Issue 20: a custom domain added through the admin API gets its certificate by TLS-ALPN-01
/// without a restart (the TXT record must name an app here first), is served and renewed like
/// the config's, and stops being served when deleted.
#[test]
fn admin_api_custom_domain_added_at_run_time_gets_its_certificate_by_tls_alpn01() {
    use gatehouse_tests::admin::{call, conforms, openapi};
    let knot = Knot::start(
        "test",
        &[
            "web.custom 60 A 127.0.0.1",
            "_gatehouse-app-address.web.custom 60 TXT \"shop\"",
            "nowhere.custom 60 A 127.0.0.1",
        ],
    );
    let port = free_port();
    let pebble = Pebble::start(&PebbleOptions {
        tls_port: port,
        ..PebbleOptions::new(knot.addr)
    });
    let app = http_app();
    let config = alpn_config(&pebble, &knot, port, app.port(), "", "").replace(
        "[proxy.custom_domains]\nenabled = false",
        &format!(
            "[proxy.custom_domains]\nenabled = true\nnameservers = [\"{}\"]",
            knot.addr
        ),
    );
    let gw = Gateway::start(&config);
    let admin = gw.admin.unwrap();
    let doc = openapi();
    gw.wait_log("ACME account", Duration::from_secs(30));
    // A name whose TXT record names no app here is refused: nothing is ordered for it.
    let a = call(
        admin,
        "POST",
        "/v1/custom-domains",
        None,
        Some(&serde_json::json!({ "domain": "nowhere.custom.test" })),
    );
    assert_eq!(a.status, 422, "{:?}", a.body);
    conforms(&doc, "POST", "/v1/custom-domains", &a);
    let a = call(
        admin,
        "POST",
        "/v1/custom-domains",
        None,
        Some(&serde_json::json!({ "domain": "web.custom.test" })),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    conforms(&doc, "POST", "/v1/custom-domains", &a);
    assert_eq!(a.body["app"], "shop");
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    let (mut tls, _) = connect(gw.addr, "web.custom.test", client(&pebble.issuing_root()));
    assert_eq!(peer_names(&tls.conn), vec!["web.custom.test"]);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.custom.test\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = tls.read_to_string(&mut body);
    assert!(body.ends_with("hello from web"), "{body}");
    let a = call(admin, "GET", "/v1/certificates", None, None);
    conforms(&doc, "GET", "/v1/certificates", &a);
    let cert = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["names"][0] == "web.custom.test")
        .cloned()
        .unwrap();
    assert_eq!(
        (cert["id"].as_str(), cert["key_origin"].as_str()),
        (Some("web.custom.test"), Some("sealed"))
    );
    // Renew now, through the API: a second certificate.
    let a = call(
        admin,
        "POST",
        "/v1/certificates/web.custom.test/renew",
        None,
        None,
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    conforms(&doc, "POST", "/v1/certificates/{id}/renew", &a);
    wait_metric(&gw, ISSUED, 2, Duration::from_secs(60));
    // Deleted: no longer served.
    let a = call(
        admin,
        "DELETE",
        "/v1/custom-domains/web.custom.test",
        None,
        None,
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    conforms(&doc, "DELETE", "/v1/custom-domains/{name}", &a);
    let mut tcp = std::net::TcpStream::connect(gw.addr).unwrap();
    let mut conn = rustls::ClientConnection::new(
        client(&pebble.issuing_root()),
        "web.custom.test".try_into().unwrap(),
    )
    .unwrap();
    let mut s = rustls::Stream::new(&mut conn, &mut tcp);
    assert!(
        s.write_all(b"x").is_err(),
        "no certificate for a deleted domain"
    );
}

/// Issue 20: certificates on demand. A custom domain's first handshake asks for one; it is
/// ordered only if the name routes, `[admission]` admits it and the rate limits allow, so
/// neither a denied app nor a flood of names reaches the CA.
#[test]
fn admission_gates_on_demand_certificates_and_rate_limits_hold() {
    use gatehouse_tests::acme_env::handshake_ok;
    let mut records = vec![
        "bank.custom 60 A 127.0.0.1".to_owned(),
        "_gatehouse-app-address.bank.custom 60 TXT \"bank\"".to_owned(),
    ];
    for n in ["web", "x1", "x2", "x3"] {
        records.push(format!("{n}.custom 60 A 127.0.0.1"));
        records.push(format!("_gatehouse-app-address.{n}.custom 60 TXT \"shop\""));
    }
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let knot = Knot::start("test", &records);
    let port = free_port();
    let pebble = Pebble::start(&PebbleOptions {
        tls_port: port,
        ..PebbleOptions::new(knot.addr)
    });
    let app = http_app();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("allowed"), "shop\n").unwrap();
    let config = alpn_config(
        &pebble,
        &knot,
        port,
        app.port(),
        "",
        "[acme.on_demand]\nenabled = true\nmax_per_app_per_hour = 2\n",
    )
    .replace(
        "[proxy.custom_domains]\nenabled = false",
        &format!(
            "[proxy.custom_domains]\nenabled = true\nnameservers = [\"{}\"]",
            knot.addr
        ),
    ) + &format!(
        "{}\n[admission]\nallow_list = \"allowed\"\n",
        one_app("bank", app.port())
    );
    let gw = Gateway::start_in(dir, &config);
    gw.wait_log("ACME account", Duration::from_secs(30));
    let root = client(&pebble.issuing_root());
    // The first handshake asks; the certificate follows.
    assert!(
        !handshake_ok(gw.addr, "web.custom.test", root.clone()),
        "no certificate yet"
    );
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    let (tls, _) = connect(gw.addr, "web.custom.test", root.clone());
    assert_eq!(peer_names(&tls.conn), vec!["web.custom.test"]);
    // An app the admission does not list gets nothing.
    assert!(!handshake_ok(gw.addr, "bank.custom.test", root.clone()));
    gw.wait_log("not in the allow list", Duration::from_secs(10));
    // A name with no TXT record never routes, so it never reaches the gate.
    assert!(!handshake_ok(
        gw.addr,
        "random-4711.custom.test",
        root.clone()
    ));
    // Two orders per hour for shop: x1 is the second, x2 and x3 are refused.
    for n in ["x1", "x2", "x3"] {
        assert!(!handshake_ok(
            gw.addr,
            &format!("{n}.custom.test"),
            root.clone()
        ));
    }
    wait_metric(&gw, ISSUED, 2, Duration::from_secs(60));
    gw.wait_log(
        "its most (acme.on_demand.max_per_app_per_hour)",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.metric(ISSUED), 2, "nothing more reached the CA");
    let log = gw.log();
    assert!(!log.contains("random-4711.custom.test: ordering"), "{log}");
    assert!(handshake_ok(gw.addr, "x1.custom.test", root.clone()));
    assert!(!handshake_ok(gw.addr, "x3.custom.test", root));
}
