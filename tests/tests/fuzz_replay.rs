//! The fuzz targets' checks (`fuzz/checks.rs`) on every test run: each committed seed, then
//! a few thousand deterministic mutations of them (bit flips, interesting bytes, insertions,
//! deletions, splices). Not a substitute for `fuzz/run.sh` (libFuzzer, coverage-guided, hours):
//! a cheap guard that keeps every target's seeds and invariants alive. A failing input is
//! written to `target/fuzz-replay/<target>-<n>` so `cargo fuzz run <target> <file>` replays it.
//!
//! `cargo test -p gatehouse-tests --test fuzz_replay -- --ignored fuzz_seeds_write` rewrites
//! the seeds that are made with the real code (RA-TLS certificate, bundle, statement, event
//! log, registration).

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\"{}[]:,;=\\.-0 \n\t";

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = out.len();
        match rng.u8(0..7) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(0..len);
                out[i] = INTERESTING[rng.usize(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.usize(0..=len);
                out.insert(i, rng.u8(..));
            }
            3 if len > 0 => {
                let i = rng.usize(0..len);
                let n = rng.usize(1..=(len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.usize(0..len);
                let n = rng.usize(1..=(len - i).min(16));
                let copy = out[i..i + n].to_vec();
                let at = rng.usize(0..=len);
                out.splice(at..at, copy);
            }
            5 => out.truncate(rng.usize(0..=len)),
            _ if !other.is_empty() => {
                let cut = rng.usize(0..=out.len());
                let from = rng.usize(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    out
}

/// Runs `target`'s check on its seeds and `rounds` mutations; a panic names the input file.
fn replay(target: &str, rounds: usize) {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"))
        .1;
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let run = |n: usize, input: &[u8]| {
        let result = std::panic::catch_unwind(|| check(input));
        if let Err(e) = result {
            let dir = root().join("target/fuzz-replay");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{target}-{n}"));
            std::fs::write(&file, input).unwrap();
            eprintln!("{target}: input {n} failed; saved as {}", file.display());
            std::panic::resume_unwind(e);
        }
    };
    for (i, s) in seeds.iter().enumerate() {
        run(i, s);
    }
    let mut rng = fastrand::Rng::with_seed(target.bytes().map(u64::from).sum());
    for n in 0..rounds {
        let a = &seeds[rng.usize(0..seeds.len())];
        let b = &seeds[rng.usize(0..seeds.len())];
        run(seeds.len() + n, &mutate(&mut rng, a, b));
    }
}

#[test]
fn fuzz_replay_client_hello() {
    replay("client_hello", 20000);
}

#[test]
fn fuzz_replay_proxy_protocol() {
    replay("proxy_protocol", 20000);
}

#[test]
fn fuzz_replay_route_name() {
    replay("route_name", 20000);
}

#[test]
fn fuzz_replay_caa_value() {
    replay("caa_value", 30000);
}

#[test]
fn fuzz_replay_ratls_evidence() {
    replay("ratls_evidence", 5000);
}

#[test]
fn fuzz_replay_bundle_jcs() {
    replay("bundle_jcs", 5000);
}

#[test]
fn fuzz_replay_event_log() {
    replay("event_log", 20000);
}

#[test]
fn fuzz_replay_config_toml() {
    replay("config_toml", 20000);
}

#[test]
fn fuzz_replay_vpc_bodies() {
    replay("vpc_bodies", 1000);
}

#[test]
fn fuzz_replay_custom_domain_txt() {
    replay("custom_domain_txt", 20000);
}

#[test]
fn fuzz_replay_statement() {
    replay("statement", 1000);
}

#[test]
fn fuzz_replay_dns_reply() {
    replay("dns_reply", 20000);
}

/// Every target has a test above and seeds.
#[test]
fn fuzz_replay_covers_every_target() {
    let me = include_str!("fuzz_replay.rs");
    for (name, _) in checks::TARGETS {
        assert!(me.contains(&format!("fn fuzz_replay_{name}()")), "{name}");
        assert!(!seeds(name).is_empty(), "{name}");
        let bin = root().join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(bin.exists(), "{}", bin.display());
    }
}

/// The seeds reach the deep paths (a fuzzer starting from them explores past the first
/// refusal): the statement and the registration's quote verify, the certificate has evidence,
/// the bundle reads, the replies pair with the request, one CAA seed locks.
#[test]
fn fuzz_replay_seeds_reach_the_deep_paths() {
    let one = |target: &str, name: &str| {
        std::fs::read(root().join("fuzz/seeds").join(target).join(name)).unwrap()
    };
    let policy =
        gatehouse_attest::policy::Policy::parse("insecure_trust_simulator_root = true").unwrap();
    let s: gatehouse_attest::statement::Statement =
        serde_json::from_slice(&one("statement", "statement.json")).unwrap();
    gatehouse_attest::statement::verify_statement(&s, Some(b"hello"), &policy, None)
        .expect("the statement seed verifies");
    let req: gatehouse_vpc::register::RegisterRequest =
        serde_json::from_slice(&one("vpc_bodies", "register.json")).unwrap();
    let collateral =
        gatehouse_attest::simulator::MockPki::from_seed(&gatehouse_attest::simulator::DEFAULT_SEED)
            .unwrap()
            .collateral()
            .unwrap();
    let now = gatehouse_attest::unix_now();
    gatehouse_attest::verify::verify_quote(&req.evidence, &collateral, now, true)
        .expect("the registration seed's quote verifies");
    gatehouse_attest::ratls::evidence_of(&one("ratls_evidence", "simulated-ratls.der"))
        .expect("the certificate seed has evidence");
    let b: gatehouse_attest::bundle::Bundle =
        serde_json::from_slice(&one("bundle_jcs", "bundle.json")).unwrap();
    b.claims().unwrap();
    let zone = hickory_proto::rr::Name::from_ascii("shop.example.").unwrap();
    let request = gatehouse_dns::wire::update_request(&zone, 0x4a11);
    for name in ["noerror", "refused", "notauth-signed"] {
        gatehouse_dns::wire::read_reply(&request, &one("dns_reply", name)).expect(name);
    }
    let locked = one("caa_value", "locked");
    let record = gatehouse_caa::CaaRecord {
        flags: 0,
        tag: "issue".into(),
        value: locked[2..].to_vec(),
    };
    let policy = gatehouse_caa::Policy {
        issuers: vec!["letsencrypt.org".into()],
        accounts: vec!["https://acme-v02.api.letsencrypt.org/acme/acct/1".into()],
        methods: vec!["dns-01".into()],
    };
    assert_eq!(
        gatehouse_caa::evaluate("shop.example", &[record], &policy),
        gatehouse_caa::Verdict::Locked
    );
}

#[tokio::test]
#[ignore = "rewrites fuzz/seeds from the real code; run by hand"]
async fn fuzz_seeds_write() {
    seeds_from_the_real_code::write(&root().join("fuzz/seeds")).await;
}

mod seeds_from_the_real_code {
    use gatehouse_attest::bundle::{Bundle, Claims, SpkiHashes};
    use gatehouse_attest::eventlog::Event;
    use gatehouse_attest::simulator::{Simulator, SimulatorConfig};
    use gatehouse_attest::statement::Signer;
    use gatehouse_attest::QuoteProvider;
    use std::path::Path;

    fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }

    pub async fn write(dir: &Path) {
        let events = vec![
            Event::runtime("app-id", b"shop"),
            Event::runtime("compose-hash", &[7u8; 32]),
        ];
        let sim = Simulator::new(SimulatorConfig {
            events: events.clone(),
            ..SimulatorConfig::default()
        })
        .unwrap();

        // RA-TLS: a certificate with the quote binding its key.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = gatehouse_attest::ratls::certificate(
            &sim,
            &key,
            &["gw.test".into()],
            std::time::Duration::from_secs(86_400),
        )
        .await
        .unwrap();
        put(dir, "ratls_evidence", "simulated-ratls.der", &cert);

        // A bundle and a statement over it.
        let signer = Signer::generate().unwrap();
        let claims = serde_json::to_value(Claims {
            domains: vec!["gw.test".into(), "*.gw.test".into()],
            spki_sha256: SpkiHashes {
                current: vec![gatehouse_attest::bundle::spki_sha256(
                    &rcgen::PublicKeyData::subject_public_key_info(&key),
                )],
                next: vec![],
                previous: vec![],
            },
            keys: vec![],
            acme_account_uri: Some("https://acme.test/acct/1".into()),
            signing_keys: vec![signer.claim()],
            caa: vec!["gw.test: locked".into()],
            sealing: "simulator".into(),
            ct: None,
            channel: None,
            nonce: None,
            issued_at: 1_790_000_000,
        })
        .unwrap();
        let rd = gatehouse_attest::bundle::report_data(&claims).unwrap();
        let bundle = Bundle {
            version: 1,
            report_data: gatehouse_attest::hex::encode(&rd),
            evidence: sim.quote(rd).await.unwrap(),
            claims,
            collateral: sim.collateral(),
            certificates: Vec::new(),
        };
        let bundle_json = serde_json::to_vec_pretty(&bundle).unwrap();
        put(dir, "bundle_jcs", "bundle.json", &bundle_json);
        put(
            dir,
            "bundle_jcs",
            "numbers-and-escapes.json",
            br#"{"b":[1e3,-0.0,1.5e-7,123456789012345678901234567890],"a":"\u00e9\ud83d\ude00\n","c":{"z":null,"y":true}}"#,
        );
        let statement = signer
            .sign("chat-reply", b"hello", 1_790_000_000, bundle)
            .unwrap();
        put(
            dir,
            "statement",
            "statement.json",
            &serde_json::to_vec_pretty(&statement).unwrap(),
        );

        // The event log, with a non-runtime event beside the runtime ones.
        let mut log = events.clone();
        log.insert(
            0,
            serde_json::from_value(serde_json::json!({
                "imr": 0, "event_type": 1, "digest": "00".repeat(48), "event": "", "event_payload": ""
            }))
            .unwrap(),
        );
        put(
            dir,
            "event_log",
            "events.json",
            &serde_json::to_vec_pretty(&log).unwrap(),
        );

        // A registration request with a real (simulated) quote binding key and nonce.
        let wg = [9u8; 32];
        let nonce = [5u8; 32];
        use base64::Engine as _;
        let rd = gatehouse_vpc::register::report_data("shop", &wg, &nonce);
        let req = gatehouse_vpc::register::RegisterRequest {
            app_id: "shop".into(),
            wg_public_key: base64::engine::general_purpose::STANDARD.encode(wg),
            nonce: gatehouse_attest::hex::encode(&nonce),
            evidence: sim.quote(rd).await.unwrap(),
        };
        put(
            dir,
            "vpc_bodies",
            "register.json",
            &serde_json::to_vec_pretty(&req).unwrap(),
        );

        // Replies to an UPDATE of shop.example (id 0x4a11): accepted, refused, and a signed
        // NOTAUTH.
        use hickory_proto::op::{MessageType, ResponseCode};
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
        use hickory_proto::rr::{Name, TSigner};
        let zone = Name::from_ascii("shop.example.").unwrap();
        for (name, rcode, signed) in [
            ("noerror", ResponseCode::NoError, false),
            ("refused", ResponseCode::Refused, false),
            ("notauth-signed", ResponseCode::NotAuth, true),
        ] {
            let mut m = gatehouse_dns::wire::update_request(&zone, 0x4a11);
            m.metadata.message_type = MessageType::Response;
            m.metadata.response_code = rcode;
            if signed {
                let key = Name::from_ascii("gatehouse-key.").unwrap();
                let signer =
                    TSigner::new(vec![0x42; 32], TsigAlgorithm::HmacSha256, key, 300).unwrap();
                m.finalize(&signer, 1_790_000_000).unwrap();
            }
            put(dir, "dns_reply", name, &m.to_vec().unwrap());
        }
    }
}
