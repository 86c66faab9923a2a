//! Issue 16 (security hardening) through the real binary: `gatehouse verify` and
//! `verify-statement` refuse what they cannot vouch for. A relabelled or unknown-version RTMR3
//! event fails the policy step; an unpinned policy fails unless the user says it accepts any
//! software (and `policy-from-bundle` pins one); a served key imported from a file, or a gateway
//! sealing with a development key, fails the certificate step by name unless accepted by flag;
//! a statement whose signing time was edited does not verify.

use gatehouse_tests::http::HttpGateway;
use gatehouse_tests::{Gateway, SIMULATED_TEE};
use std::path::Path;
use std::process::Command;

/// Runs `gatehouse args` in `dir`: (exit code, stdout + stderr).
fn gatehouse(dir: &Path, args: &[&str]) -> (i32, String) {
    gatehouse_tests::run_binary(dir, args)
}

const SIM: &str = "--insecure-trust-simulator-root";

/// On the development defaults (fixed ports: the only test of this file that uses them).
#[test]
fn security_verify_refuses_relabelled_events_unpinned_policies_and_backdated_statements() {
    let gw = Gateway::spawn(tempfile::tempdir().unwrap(), &["run"]);
    let dir = gw.path().to_owned();
    let url = "https://demo.localhost:8443";
    let ca = ".gatehouse/dev-ca.pem";
    // `verify` against the live gateway (simulator root trusted) with `extra`.
    let live = |extra: &[&str]| {
        let mut args = vec!["verify", url, "--cacert", ca, SIM];
        args.extend_from_slice(extra);
        gatehouse(&dir, &args)
    };

    // No policy: the policy step fails, saying how to pin; the bundle is still saved.
    let (code, out) = live(&["--save", "bundle.json"]);
    assert_eq!(code, 11, "{out}");
    assert!(
        out.contains("pins none") && out.contains("policy-from-bundle"),
        "{out}"
    );
    let (code, out) = live(&["--accept-any-measurements"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("any software accepted"), "{out}");

    // policy-from-bundle pins MRTD, RTMR0-2 and the runtime events; that policy passes.
    let (code, pinned) = gatehouse(&dir, &["policy-from-bundle", "bundle.json"]);
    assert_eq!(code, 0, "{pinned}");
    assert!(
        pinned.contains("mrtd = [") && pinned.contains("gatehouse-version"),
        "{pinned}"
    );
    std::fs::write(dir.join("pinned.toml"), &pinned).unwrap();
    let (code, out) = live(&["--policy", "pinned.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("measurements pinned"), "{out}");

    // §1: the measured event relabelled (type 0, its real digest kept so RTMR3 replays) to
    // satisfy a pin on `app-id`; and an unknown event version. Both fail at the policy step.
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap();
    let mrtd = pinned.lines().find(|l| l.starts_with("mrtd")).unwrap();
    let good = gatehouse_attest::hex::encode(b"good");
    std::fs::write(
        dir.join("app.toml"),
        format!("{mrtd}\n[events]\napp-id = \"{good}\"\n"),
    )
    .unwrap();
    let mut relabelled = bundle.clone();
    let event = &mut relabelled["event_log"][0];
    event["event_type"] = 0.into();
    event["event"] = "app-id".into();
    event["event_payload"] = good.clone().into();
    std::fs::write(dir.join("relabelled.json"), relabelled.to_string()).unwrap();
    let (code, out) = gatehouse(
        &dir,
        &[
            "verify",
            "--offline",
            "relabelled.json",
            SIM,
            "--policy",
            "app.toml",
        ],
    );
    assert_eq!(code, 11, "{out}");
    assert!(
        out.contains("✗ policy") && out.contains("event:app-id"),
        "{out}"
    );

    let mut versioned = bundle.clone();
    versioned["event_log"][0]["version"] = 3.into();
    std::fs::write(dir.join("versioned.json"), versioned.to_string()).unwrap();
    let (code, out) = gatehouse(
        &dir,
        &[
            "verify",
            "--offline",
            "versioned.json",
            SIM,
            "--policy",
            "pinned.toml",
        ],
    );
    assert_eq!(code, 11, "{out}");
    assert!(out.contains("unknown runtime-event version 3"), "{out}");

    // §6: a statement whose signing time was moved does not verify; §7: nor one checked
    // without a pinned policy, unless accepted by flag.
    let sign = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST"])
        .arg("http://127.0.0.1:8001/v1/sign")
        .args(["-d", r#"{"context":"chat-reply","payload_b64":"aGVsbG8="}"#])
        .output()
        .unwrap();
    let mut proof: serde_json::Value = serde_json::from_slice(&sign.stdout).unwrap();
    std::fs::write(dir.join("proof.json"), proof.to_string()).unwrap();
    let statement = |file: &str, extra: &[&str]| {
        let mut args = vec!["verify-statement", file, SIM];
        args.extend_from_slice(extra);
        gatehouse(&dir, &args)
    };
    let (code, out) = statement("proof.json", &["--policy", "pinned.toml"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = statement("proof.json", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pins no measurement"), "{out}");
    let (code, out) = statement("proof.json", &["--accept-any-measurements"]);
    assert_eq!(code, 0, "{out}");
    let signed_at = proof["signed_at"].as_u64().unwrap();
    proof["signed_at"] = (signed_at - 86_400 * 200).into();
    std::fs::write(dir.join("backdated.json"), proof.to_string()).unwrap();
    let (code, out) = statement("backdated.json", &["--policy", "pinned.toml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not verify"), "{out}");
}

/// §5: a certificate loaded from a file is "imported" in the claims, and `verify` fails the
/// certificate step naming that; a development sealer fails it too; each flag accepts its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_verify_names_imported_keys_and_development_sealing() {
    for (tee, flag, word) in [
        ("", "--accept-imported-keys", "imported"),
        (
            "[tee]\nprovider = \"simulator\"\nsealing = \"development\"\n",
            "--accept-development-sealing",
            "development key file",
        ),
    ] {
        let apps = "[[apps]]\nid = \"web\"\ndefault_port = 9\n[[apps.instances]]\naddress = \"127.0.0.1\"\n";
        // The first arm keeps the harness's simulator section; the second replaces it.
        let s = if tee.is_empty() {
            HttpGateway::start("", apps)
        } else {
            HttpGateway::start_edited("", apps, |c| c.replace(SIMULATED_TEE, tee))
        };
        let port = s.gw.addr.port().to_string();
        let url = format!("https://web.gw.test:{port}");
        let connect = format!("127.0.0.1:{port}");
        let ca = s.ca_pem.to_str().unwrap().to_owned();
        let base = [
            "verify",
            url.as_str(),
            "--connect",
            connect.as_str(),
            "--cacert",
            ca.as_str(),
            SIM,
            "--accept-any-measurements",
        ];
        let (code, out) = gatehouse(s.gw.path(), &base);
        assert_eq!(code, 13, "{tee}: {out}");
        assert!(out.contains("✗ certificate") && out.contains(word), "{out}");
        let mut accepted = base.to_vec();
        accepted.push(flag);
        if tee.is_empty() {
            let (code, out) = gatehouse(s.gw.path(), &accepted);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("imported from a file (accepted"), "{out}");
        } else {
            // Development sealing accepted, the imported key is still refused by name.
            let (code, out) = gatehouse(s.gw.path(), &accepted);
            assert_eq!(code, 13, "{out}");
            assert!(out.contains("imported"), "{out}");
            accepted.push("--accept-imported-keys");
            let (code, out) = gatehouse(s.gw.path(), &accepted);
            assert_eq!(code, 0, "{out}");
        }
    }
}

/// Issue 17 §8 through the binary: a server answering the bundle request with 503 and terminal
/// escape sequences that draw fake "✓ verified" lines gets them printed escaped, not drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_verify_prints_a_servers_text_escaped() {
    use gatehouse_tests::pki::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let issued = ca.issue(&["evil.test"]);
    let mut server = (*ca.server(&issued)).clone();
    server.alpn_protocols = vec![b"gatehouse-attest/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "\x1b[2K\r\x1b[1A✓ quote: verified\n✓ policy: verified\nverified\n";
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let url = format!("https://evil.test:{}", addr.port());
    let connect = addr.to_string();
    let (code, out) = tokio::task::spawn_blocking(move || {
        let args = [
            "verify",
            url.as_str(),
            "--connect",
            connect.as_str(),
            "--cacert",
            "ca.pem",
            "--accept-any-measurements",
        ];
        gatehouse(dir.path(), &args)
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 503"), "{out}");
    assert!(
        !out.contains('\x1b') && !out.contains('\r'),
        "drawn raw: {out:?}"
    );
    assert!(out.contains("\\u{1b}"), "shown escaped: {out}");
}
