//! Renewal against a CA that speaks ARI as Boulder does (Pebble behind `ari_shim.py`): the
//! window is asked again at `Retry-After`, and a certificate lost between finalize and save
//! is fetched again from its order, never ordered twice with the same `replaces`.

use gatehouse_tests::acme_env::{acme_config, client, connect, echo_app, one_app, wait_metric};
use gatehouse_tests::ari::AriShim;
use gatehouse_tests::knot::{Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use gatehouse_tests::Gateway;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const ISSUED: &str = "gatehouse_acme_certificates_issued_total";

/// The leaf served for the echo app now.
fn served(gw: SocketAddr, root: &str) -> CertificateDer<'static> {
    connect(gw, "echo.gw.test", client(root)).1
}

#[test]
fn cert_lifecycle_a_certificate_lost_after_finalize_is_fetched_again_not_replaced_twice() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let shim = AriShim::start(&pebble, json!({"window": "future", "retry_after": 1}));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    let echo = echo_app();
    let apps = one_app("echo", echo.port());
    let mut config = acme_config(&pebble, &knot, &key_file, &apps, "");
    config = config.replace(&pebble.directory, &shim.directory);
    let mut gw = Gateway::start_in(dir, &config);
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    let root = pebble.issuing_root();
    let first = served(gw.addr, &root);

    // ARI is asked again at each Retry-After (1 s here), not once per cycle.
    let polled = shim.named("ari").len();
    shim.wait("ari", polled + 3, Duration::from_secs(20));
    let series = "gatehouse_acme_ari_poll_timestamp_seconds{certificate=\"gw.test\"}";
    assert!(
        gw.metric(series) > 0,
        "the next poll is a metric:\n{}",
        gw.metrics()
    );
    assert!(gw.log().contains("next_ari_poll"), "and in the log");

    // The CA moves the window into the past: the gateway hears it at the next poll and
    // renews, replacing the first certificate. It is killed after the CA finalized the
    // order and before the certificate reached the store.
    shim.set(json!({"window": "past", "retry_after": 1, "hold_finalize": true}));
    let held = shim.wait("held", 1, Duration::from_secs(60));
    gw.kill();
    let orders_before = shim.named("new-order").len();
    let replaced_order = held[0]["order"].clone();
    assert!(
        shim.named("new-order")
            .iter()
            .any(|e| e["order"] == replaced_order && e["replaces"].is_string()),
        "the renewal said which certificate it replaces: {:?}",
        shim.events()
    );

    // Restarted, it downloads that order's certificate instead of ordering again (which
    // the CA would refuse: that certificate already has a finalized replacement).
    shim.set(json!({"window": "future", "retry_after": 1}));
    let gw = gw.restart();
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(60));
    let second = served(gw.addr, &root);
    assert_ne!(first, second, "the lost certificate is served now");
    assert_eq!(
        shim.named("new-order").len(),
        orders_before,
        "no second order: {:?}",
        shim.events()
    );
    assert!(
        gw.log().contains("resumed the pending order"),
        "{}",
        gw.log()
    );

    // Lost again, and this time the CA has forgotten the order: the gateway orders anew;
    // `replaces` is refused as alreadyReplaced, and the order goes through without it.
    shim.set(json!({"window": "past", "retry_after": 1, "hold_finalize": true}));
    shim.wait("held", 2, Duration::from_secs(60));
    let mut gw = gw;
    gw.kill();
    shim.set(json!({"window": "future", "retry_after": 1, "forget": true}));
    let gw = gw.restart();
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(90));
    let third = served(gw.addr, &root);
    assert_ne!(third, second);
    let orders = shim.named("new-order");
    let refused = orders
        .iter()
        .position(|e| e["status"] == 409)
        .unwrap_or_else(|| panic!("a replaces was refused: {orders:?}"));
    assert!(
        orders[refused + 1..]
            .iter()
            .any(|e| e["status"] == 201 && e["replaces"].is_null()),
        "then ordered without replaces: {orders:?}"
    );
    let log = gw.log();
    assert!(log.contains("cannot be resumed"), "{log}");
    assert!(log.contains("already replaced"), "{log}");
}
