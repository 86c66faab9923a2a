//! Registration checks against a real WireGuard daemon (wireguard-go in a namespace this test
//! makes) and the embedded store: a simulated CVM whose quote binds its key and nonce gets an
//! address and a peer; each refusal (unknown app, reused nonce, measurement outside the
//! policy, quote binding another key) names its check and leaves no lease and no peer.

use gatehouse_attest::pccs::{CollateralSource, Pccs, DEFAULT_PCCS};
use gatehouse_attest::policy::Policy;
use gatehouse_attest::simulator::{Simulator, SimulatorConfig};
use gatehouse_attest::QuoteProvider;
use gatehouse_tests::netns::{wireguard_ready, Net};
use gatehouse_vpc::leases::Leases;
use gatehouse_vpc::register::{report_data, RegisterRequest, Registrar};
use gatehouse_vpc::wireguard::{base64, KeyPair, Uapi, WireGuard};
use std::collections::HashMap;
use std::sync::Arc;

fn vpc_config() -> gatehouse_config::VpcConfig {
    let text = "[vpc]\nprefix = \"10.88.0.0/24\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:0\"\n";
    gatehouse_config::Config::from_toml(text, std::path::Path::new("."))
        .unwrap()
        .vpc
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_change_nothing_until_all_pass() {
    if !wireguard_ready() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (ns, ifname) = (format!("ghrg{tag}"), format!("wgr{tag}"));
    let mut net = Net::default();
    net.namespace(&ns);
    net.wireguard(&ns, &ifname);
    let wg: Arc<dyn WireGuard> = Arc::new(Uapi::new(&ifname));
    let gw_key = KeyPair::generate().unwrap();
    wg.configure(&gw_key, Some(51820)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(gatehouse_store::Embedded::open(&dir.path().join("state.redb")).unwrap());
    let config = vpc_config();
    let sealer = Arc::new(gatehouse_store::AesGcmSealer::from_key(&[9; 32], "test").unwrap());
    let leases = Leases::new(store, sealer, config.prefix, vec![config.gateway_address]);
    let good = SimulatorConfig::default();
    let policy = Policy::parse(&format!(
        "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]",
        gatehouse_attest::hex::encode(&good.mrtd)
    ))
    .unwrap();
    let sim = Simulator::new(good.clone()).unwrap();
    let policies = HashMap::from([("shop".to_owned(), policy)]);
    let registrar = Registrar::new(
        config,
        leases.clone(),
        wg.clone(),
        gw_key.clone(),
        policies,
        Arc::new(CollateralSource::new(
            Some(sim.collateral().unwrap()),
            Pccs::new(DEFAULT_PCCS, std::time::Duration::from_secs(1)).unwrap(),
        )),
    );
    let now = gatehouse_attest::unix_now();

    let nothing_changed = |what: &str| {
        let wg = wg.clone();
        let leases = leases.clone();
        let what = what.to_owned();
        async move {
            assert!(leases.all().await.unwrap().is_empty(), "{what}: no lease");
            assert!(wg.state().await.unwrap().1.is_empty(), "{what}: no peer");
        }
    };
    let cvm = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let rogue = Simulator::new(SimulatorConfig {
        mrtd: [0xee; 48],
        ..good.clone()
    })
    .unwrap();
    let attempt = |sim: &Simulator, app: &str, nonce: Option<[u8; 32]>, bound: &KeyPair| {
        let nonce = nonce.unwrap_or_else(|| registrar.challenge().unwrap());
        let evidence = futures_lite(sim.quote(report_data(app, &bound.public, &nonce)));
        let req = RegisterRequest {
            app_id: app.into(),
            wg_public_key: base64(&cvm.public),
            nonce: gatehouse_attest::hex::encode(&nonce),
            evidence,
        };
        futures_lite(async { Ok::<_, ()>(registrar.register(&req, now).await) })
    };

    // Each refusal names its check and leaves nothing behind.
    for (what, result, check) in [
        ("unknown app", attempt(&sim, "bank", None, &cvm), "app"),
        (
            "foreign nonce",
            attempt(&sim, "shop", Some([9; 32]), &cvm),
            "nonce",
        ),
        (
            "measurement outside the policy",
            attempt(&rogue, "shop", None, &cvm),
            "policy",
        ),
        (
            "quote binding another key",
            attempt(&sim, "shop", None, &other),
            "binding",
        ),
    ] {
        let e = result.unwrap_err();
        assert_eq!(e.check, check, "{what}: {e}");
        nothing_changed(what).await;
    }

    // All checks pass: a lease and a peer with exactly that /32.
    let nonce = registrar.challenge().unwrap();
    let ok = attempt(&sim, "shop", Some(nonce), &cvm).unwrap();
    assert_eq!(ok.address.to_string(), "10.88.0.2");
    assert_eq!(ok.gateway_public_key, base64(&gw_key.public));
    let peers = wg.state().await.unwrap().1;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, cvm.public);
    // Issue 16 §8: 5,000 challenges from someone else between an agent's challenge and its
    // registration evict nothing (nonces are stateless).
    let nonce = registrar.challenge().unwrap();
    for _ in 0..5_000 {
        registrar.challenge().unwrap();
    }
    let flooded = attempt(&sim, "shop", Some(nonce), &cvm).unwrap();
    assert_eq!(
        flooded.address, ok.address,
        "security: registered through the flood"
    );
    // A nonce is single-use; registering again with a fresh one keeps the address.
    let e = attempt(&sim, "shop", Some(nonce), &cvm).unwrap_err();
    assert_eq!(e.check, "nonce", "{e}");
    let again = attempt(&sim, "shop", None, &cvm).unwrap();
    assert_eq!(again.address, ok.address);
    assert_eq!(leases.all().await.unwrap().len(), 1);
    drop(net);
}

/// Issue 16 §1 at registration: a CVM that measured `app-id = evil` relabels that event (real
/// digest kept, so RTMR3 replays) as a non-runtime event named `app-id` with payload `shop`, or
/// gives it an unknown version: the `shop` policy refuses both by name. No WireGuard is
/// touched: refusals come before any lease or peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_relabelled_event_is_refused_at_registration() {
    use gatehouse_attest::eventlog::Event;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(gatehouse_store::Embedded::open(&dir.path().join("state.redb")).unwrap());
    let config = vpc_config();
    let sealer = Arc::new(gatehouse_store::AesGcmSealer::from_key(&[9; 32], "test").unwrap());
    let leases = Leases::new(store, sealer, config.prefix, vec![config.gateway_address]);
    let measured = SimulatorConfig {
        events: vec![Event::runtime("app-id", b"evil")],
        ..SimulatorConfig::default()
    };
    let sim = Simulator::new(measured).unwrap();
    let policy = Policy::parse(&format!(
        "insecure_trust_simulator_root = true\n[events]\napp-id = \"{}\"",
        gatehouse_attest::hex::encode(b"shop")
    ))
    .unwrap();
    let wg: Arc<dyn WireGuard> = Arc::new(Uapi::new("ghnone0"));
    let registrar = Registrar::new(
        config,
        leases.clone(),
        wg,
        KeyPair::generate().unwrap(),
        HashMap::from([("shop".to_owned(), policy)]),
        Arc::new(CollateralSource::new(
            Some(sim.collateral().unwrap()),
            Pccs::new(DEFAULT_PCCS, std::time::Duration::from_secs(1)).unwrap(),
        )),
    );
    let cvm = KeyPair::generate().unwrap();
    type Edit = fn(&mut Event);
    let edits: [(&str, Edit); 2] = [
        ("relabelled", |e| {
            e.event_type = 0;
            e.event_payload = b"shop".to_vec();
        }),
        ("unknown version", |e| e.version = 7),
    ];
    for (what, edit) in edits {
        let nonce = registrar.challenge().unwrap();
        let mut evidence = futures_lite(sim.quote(report_data("shop", &cvm.public, &nonce)));
        edit(&mut evidence.event_log[0]);
        let req = RegisterRequest {
            app_id: "shop".into(),
            wg_public_key: base64(&cvm.public),
            nonce: gatehouse_attest::hex::encode(&nonce),
            evidence,
        };
        let e = registrar
            .register(&req, gatehouse_attest::unix_now())
            .await
            .unwrap_err();
        assert_eq!(e.check, "policy", "{what}: {e}");
        assert!(e.to_string().contains("event:app-id"), "{what}: {e}");
        assert!(leases.all().await.unwrap().is_empty(), "{what}: no lease");
    }
}

/// Issue 16 §8: 5,000 challenges from someone else between an agent's challenge and its
/// registration do not evict its nonce (the attempt gets past the nonce check and fails only
/// at the binding, its quote being for another key); an unknown app id of 300 KiB is echoed
/// back (and logged) cut to 64 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_challenge_flood_keeps_nonces_and_refusals_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(gatehouse_store::Embedded::open(&dir.path().join("state.redb")).unwrap());
    let config = vpc_config();
    let sealer = Arc::new(gatehouse_store::AesGcmSealer::from_key(&[9; 32], "test").unwrap());
    let leases = Leases::new(store, sealer, config.prefix, vec![config.gateway_address]);
    let sim = Simulator::new(SimulatorConfig::default()).unwrap();
    let policy = Policy::parse(&format!(
        "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]",
        gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd)
    ))
    .unwrap();
    let registrar = Registrar::new(
        config,
        leases,
        Arc::new(Uapi::new("ghnone1")),
        KeyPair::generate().unwrap(),
        HashMap::from([("shop".to_owned(), policy)]),
        Arc::new(CollateralSource::new(
            Some(sim.collateral().unwrap()),
            Pccs::new(DEFAULT_PCCS, std::time::Duration::from_secs(1)).unwrap(),
        )),
    );
    let (cvm, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let nonce = registrar.challenge().unwrap();
    for _ in 0..5_000 {
        registrar.challenge().unwrap();
    }
    let evidence = futures_lite(sim.quote(report_data("shop", &other.public, &nonce)));
    let mut req = RegisterRequest {
        app_id: "shop".into(),
        wg_public_key: base64(&cvm.public),
        nonce: gatehouse_attest::hex::encode(&nonce),
        evidence,
    };
    let now = gatehouse_attest::unix_now();
    let e = registrar.register(&req, now).await.unwrap_err();
    assert_eq!(e.check, "binding", "the nonce survived the flood: {e}");
    req.app_id = "x".repeat(300 * 1024);
    let e = registrar.register(&req, now).await.unwrap_err();
    assert_eq!(e.check, "app");
    assert!(e.reason.len() < 120, "{} bytes", e.reason.len());
}

/// Runs a ready future to completion on this thread (the simulator's quote never waits).
fn futures_lite<T, E: std::fmt::Debug>(f: impl std::future::Future<Output = Result<T, E>>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
        .expect("the simulator quotes")
}
