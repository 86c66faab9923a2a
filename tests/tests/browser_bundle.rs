//! The attestation bundle over plain HTTPS, for pages (issue 21 §1): on every name of an
//! `http`-mode app at `/.well-known/gatehouse/attestation` (never reaching the app), and at
//! the attestation name `attest.<base>` for every app; CORS open; the served chains inside,
//! so a page can recompute the key hashes the quote binds.

use base64::Engine as _;
use gatehouse_tests::http::HttpGateway;
use gatehouse_tests::servers::{bind_same_port, http_whoami};
use gatehouse_tests::{base_config, run_until_refused};

const PATH: &str = "/.well-known/gatehouse/attestation";

/// The SHA-256 (hex) of a DER certificate's SubjectPublicKeyInfo.
fn spki_sha256(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_bundle_is_served_with_cors_on_http_apps_and_the_attestation_name() {
    let (port, mut listeners) = bind_same_port(&[[127, 0, 0, 1]]).await;
    http_whoami(listeners.remove(0), "app");
    let apps = format!(
        "[[apps]]\nid = \"web\"\nmode = \"http\"\ndefault_port = {port}\n\
         [[apps.instances]]\naddress = \"127.0.0.1\"\n\
         [[apps]]\nid = \"raw\"\ndefault_port = {port}\n\
         [[apps.instances]]\naddress = \"127.0.0.1\"\n"
    );
    let s = HttpGateway::start("", &apps);

    // On an http app's own name, over h1 and h2, with CORS for any origin.
    for version in ["--http1.1", "--http2"] {
        let out = s.curl(
            "web.gw.test",
            &[
                version,
                "-i",
                "-H",
                "Origin: https://elsewhere.example",
                &s.url("web.gw.test", PATH),
            ],
        );
        let (head, body) = out.split_once("\r\n\r\n").expect("a header");
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 200") || head.starts_with("http/2 200"),
            "{out}"
        );
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let bundle: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(bundle["version"], 1);
        assert!(
            bundle["quote"].as_str().is_some_and(|q| q.len() > 1000),
            "a quote"
        );
        assert!(
            bundle["collateral"].is_object(),
            "collateral embedded: browsers have no PCCS"
        );
        // The chains: the leaf's key is one the quote's claims list.
        let chains = bundle["certificates"].as_array().expect("certificates");
        assert_eq!(chains.len(), 1, "one wildcard chain");
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(chains[0][0].as_str().unwrap())
            .unwrap();
        let tls = s.tls("web.gw.test", &["http/1.1"]).await;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(leaf, served, "the bundle carries the chain the name serves");
        let current = &bundle["claims"]["spki_sha256"]["current"];
        assert!(
            current
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == &spki_sha256(&leaf)),
            "the served leaf's key is in the claims: {current}"
        );
    }

    // A CORS preflight is answered by the gateway.
    let out = s.curl(
        "web.gw.test",
        &[
            "-i",
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://elsewhere.example",
            "-H",
            "Access-Control-Request-Method: GET",
            &s.url("web.gw.test", PATH),
        ],
    );
    let head = out.to_ascii_lowercase();
    assert!(
        head.starts_with("http/2 204") || head.starts_with("http/1.1 204"),
        "{out}"
    );
    assert!(
        head.contains("access-control-allow-methods: get, head, options"),
        "{out}"
    );

    // Other paths still reach the app; a POST to the bundle path is refused by the gateway.
    let app = s.curl("web.gw.test", &[&s.url("web.gw.test", "/x")]);
    assert!(app.starts_with("app\n"), "{app}");
    let out = s.curl(
        "web.gw.test",
        &["-i", "-X", "POST", &s.url("web.gw.test", PATH)],
    );
    assert!(out.to_ascii_lowercase().contains(" 405"), "{out}");

    // The attestation name serves it for every app, including tcp-mode ones.
    let out = s.curl("attest.gw.test", &["-i", &s.url("attest.gw.test", PATH)]);
    let (head, body) = out.split_once("\r\n\r\n").expect("a header");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{head}"
    );
    let bundle: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert!(bundle["claims"]["spki_sha256"]["current"]
        .as_array()
        .is_some());

    // No app may take the attestation name.
    let config = format!(
        "{}\n[[apps]]\nid = \"attest\"\ndefault_port = 80\n[[apps.instances]]\naddress = \"127.0.0.1\"\n",
        base_config("")
    );
    let (err, _dir) = run_until_refused(&config, std::time::Duration::from_secs(10));
    assert!(err.contains("\"attest\" is reserved"), "{err}");
}
