//! Attestation end to end through the real binary: `gatehouse run` on the development
//! defaults (simulated TEE), then `gatehouse verify` passing, and failing at the right step
//! with its exit code for each way a bundle can be wrong; signed statements from the admin
//! API checked by `gatehouse verify-statement`.

use gatehouse_tests::pki::TestCa;
use gatehouse_tests::{binary, Gateway};
use std::path::Path;
use std::process::{Command, Output};

fn gatehouse(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `gatehouse verify` offline on `bundle` with extra args; returns (exit code, output).
fn offline(dir: &Path, bundle: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify", "--offline", bundle.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = gatehouse(dir, &args);
    (o.status.code().unwrap_or(-1), stdout(&o))
}

/// The README's command against the development defaults passes; each tampering fails at
/// its step. One test: the defaults listen on the fixed port 8443.
#[test]
fn development_defaults_verify_and_each_tampering_fails_at_its_step() {
    let gw = Gateway::spawn(tempfile::tempdir().unwrap(), &["run"]);
    let dir = gw.path().to_owned();
    let url = "https://demo.localhost:8443";
    let ca = ".gatehouse/dev-ca.pem";

    let ok = gatehouse(
        &dir,
        &[
            "verify",
            url,
            "--cacert",
            ca,
            "--insecure-trust-simulator-root",
            "--accept-any-measurements",
            "--save",
            "bundle.json",
        ],
    );
    let out = stdout(&ok);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    for step in ["✓ quote", "✓ policy", "✓ binding", "✓ certificate", "– caa"] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
    assert!(out.contains("1 runtime events replayed"), "{out}");
    assert!(gw.metric("gatehouse_attestation_connections_total") >= 1);

    // The attestation connection did not disturb the app path.
    let demo = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca,
            &format!("{url}/x"),
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&demo.stdout).contains("Gatehouse demo app"));

    // Simulated quotes are refused unless the flag says otherwise: quote step, exit 10.
    let strict = gatehouse(&dir, &["verify", url, "--cacert", ca]);
    assert_eq!(strict.status.code(), Some(10), "{}", stdout(&strict));
    assert!(stdout(&strict).contains("✗ quote"), "{}", stdout(&strict));

    // Reproducible offline: passes at a fixed time inside the collateral window...
    let bundle = dir.join("bundle.json");
    let sim = "--insecure-trust-simulator-root";
    let any = "--accept-any-measurements";
    let (code, out) = offline(&dir, &bundle, &[sim, any, "--now", "1800000000"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("– certificate: offline without --cert"),
        "{out}"
    );
    // ...and fails at the quote once the collateral expired (2090-01-01).
    let (code, out) = offline(&dir, &bundle, &[sim, any, "--now", "3786912000"]);
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("collateral expired"), "{out}");

    // A policy pinning another MRTD: policy step, exit 11; the right one passes.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    // MRTD sits at bytes 184..232 of a v4 TDX quote.
    let mrtd: String = json["quote"].as_str().unwrap()[2 * 184..2 * 232].to_owned();
    std::fs::write(
        dir.join("other.toml"),
        format!("mrtd = [\"{}\"]\n", "ab".repeat(48)),
    )
    .unwrap();
    let (code, out) = offline(&dir, &bundle, &[sim, "--policy", "other.toml"]);
    assert_eq!(code, 11, "{out}");
    assert!(out.contains("✗ policy: policy: mrtd"), "{out}");
    let version = gatehouse_attest::hex::encode(env!("CARGO_PKG_VERSION").as_bytes());
    std::fs::write(
        dir.join("pinned.toml"),
        format!("mrtd = [\"{mrtd}\"]\n[events]\ngatehouse-version = \"{version}\"\n"),
    )
    .unwrap();
    let (code, out) = offline(&dir, &bundle, &[sim, "--policy", "pinned.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("measurements pinned"), "{out}");

    // Tampered claims (a domain added): binding step, exit 12.
    let mut tampered = json.clone();
    tampered["claims"]["domains"]
        .as_array_mut()
        .unwrap()
        .push("evil.example".into());
    std::fs::write(dir.join("tampered.json"), tampered.to_string()).unwrap();
    let (code, out) = offline(&dir, &dir.join("tampered.json"), &[sim, any]);
    assert_eq!(code, 12, "{out}");
    assert!(out.contains("✗ binding: report data mismatch"), "{out}");

    // A certificate whose key is not attested: certificate step, exit 13.
    let other = TestCa::new();
    let cert = other.write(&dir, "other", &["demo.localhost"]);
    let cert_path = cert.split('"').nth(1).unwrap().to_owned();
    let (code, out) = offline(&dir, &bundle, &[sim, any, "--cert", &cert_path]);
    assert_eq!(code, 13, "{out}");
    assert!(out.contains("✗ certificate"), "{out}");

    // No collateral in the bundle and an unreachable PCCS: quote step, naming both.
    let mut bare = json.clone();
    bare.as_object_mut().unwrap().remove("collateral");
    std::fs::write(dir.join("bare.json"), bare.to_string()).unwrap();
    let (code, out) = offline(
        &dir,
        &dir.join("bare.json"),
        &[sim, any, "--pccs", "http://127.0.0.1:9"],
    );
    assert_eq!(code, 10, "{out}");
    assert!(
        out.contains("carries no collateral") && out.contains("127.0.0.1:9"),
        "{out}"
    );

    // One flipped quote byte: quote step.
    let mut flipped = json.clone();
    let mut q = json["quote"].as_str().unwrap().to_owned();
    let i = 2 * 200;
    let c = if &q[i..i + 1] == "0" { "1" } else { "0" };
    q.replace_range(i..i + 1, c);
    flipped["quote"] = q.into();
    std::fs::write(dir.join("flipped.json"), flipped.to_string()).unwrap();
    let (code, out) = offline(&dir, &dir.join("flipped.json"), &[sim, any]);
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("bad signature"), "{out}");

    // A fresh bundle for a client's nonce, over a raw TLS connection with the ALPN (openssl);
    // a malformed nonce is refused; a burst of fresh quotes is rate-limited.
    let fresh = fetch_raw(&dir, "?nonce=00c0ffee");
    assert!(fresh.starts_with("HTTP/1.1 200"), "{fresh}");
    let body = &fresh[fresh.find("\r\n\r\n").unwrap() + 4..];
    let fresh_json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(fresh_json["claims"]["nonce"], "00c0ffee");
    std::fs::write(dir.join("fresh.json"), body).unwrap();
    let (code, out) = offline(&dir, &dir.join("fresh.json"), &[sim, any]);
    assert_eq!(code, 0, "the fresh bundle verifies: {out}");
    assert!(fetch_raw(&dir, "?nonce=xyz").starts_with("HTTP/1.1 400"));
    let burst: Vec<String> = (0..12)
        .map(|i| fetch_raw(&dir, &format!("?nonce={i:02x}")))
        .collect();
    assert!(
        burst.iter().any(|r| r.starts_with("HTTP/1.1 429")),
        "no 429 in a burst of 12: {:?}",
        burst.iter().map(|r| &r[..12]).collect::<Vec<_>>()
    );

    // Signed statement from the admin API, checked offline.
    let sign = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            "POST",
            "http://127.0.0.1:8001/v1/sign",
            "-d",
            r#"{"context":"chat-reply","payload_b64":"aGVsbG8="}"#,
        ])
        .output()
        .unwrap();
    std::fs::write(dir.join("proof.json"), &sign.stdout).unwrap();
    std::fs::write(dir.join("payload"), b"hello").unwrap();
    std::fs::write(dir.join("wrong"), b"hellO").unwrap();
    let good = gatehouse(
        &dir,
        &[
            "verify-statement",
            "proof.json",
            "--payload",
            "payload",
            sim,
            any,
        ],
    );
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));
    assert!(
        stdout(&good).contains("\"chat-reply\""),
        "{}",
        stdout(&good)
    );
    let bad = gatehouse(
        &dir,
        &[
            "verify-statement",
            "proof.json",
            "--payload",
            "wrong",
            sim,
            any,
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(
        stdout(&bad).contains("payload does not match"),
        "{}",
        stdout(&bad)
    );
}

/// One bundle request over TLS with ALPN `gatehouse-attest/1` (openssl s_client), raw response.
fn fetch_raw(dir: &Path, query: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "gatehouse-attest/1"])
        .args([
            "-connect",
            "127.0.0.1:8443",
            "-servername",
            "demo.localhost",
        ])
        .args(["-CAfile", ".gatehouse/dev-ca.pem", "-verify_return_error"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let request = format!(
        "GET /.well-known/gatehouse/attestation{query} HTTP/1.1\r\nHost: demo.localhost\r\nConnection: close\r\n\r\n"
    );
    // Written, then stdin stays open until the server closes (`Connection: close`): s_client
    // would otherwise end the connection on stdin's EOF before the answer arrives.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
