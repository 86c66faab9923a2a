//! The gateway on the etcd backend (issue 19), through the real binary: Debian's etcd on
//! loopback, Pebble as the CA, Knot as the DNS server.

use gatehouse_tests::acme_env::{acme_config, client, connect, echo_app, one_app, wait_metric};
use gatehouse_tests::etcd::EtcdCluster;
use gatehouse_tests::knot::{free_port, Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use gatehouse_tests::Gateway;
use std::time::Duration;

const ISSUED: &str = "gatehouse_acme_certificates_issued_total";

fn on_etcd(config: &str, endpoints: &[String]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let out = config.replace(
        "[store]\npath = \"state\"\n",
        &format!(
            "[store]\npath = \"state\"\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"gh/\"\ntimeout = \"2s\"\n",
            list.join(", ")
        ),
    );
    assert_ne!(
        out, config,
        "the ACME config has a [store] section to extend"
    );
    out
}

/// Knot for DNS-01 (TSIG key written into a fresh directory), Pebble resolving through it.
fn ca_and_dns() -> (Knot, Pebble, tempfile::TempDir, std::path::PathBuf) {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    (knot, pebble, dir, key_file)
}

/// A node on etcd orders its certificate once, keeps the account, the certificate and its key
/// in etcd, sealed (etcd reads neither a key nor a name), nothing in a local store file, and
/// serves the stored certificate after a restart without ordering again.
#[test]
fn etcd_gateway_keeps_its_state_sealed_in_etcd_and_serves_it_after_a_restart() {
    let etcd = EtcdCluster::single();
    let (knot, pebble, dir, key_file) = ca_and_dns();
    let app = echo_app();
    let config = acme_config(&pebble, &knot, &key_file, &one_app("web", app.port()), "");
    let gw = Gateway::start_in(dir, &on_etcd(&config, &etcd.endpoints()));
    wait_metric(&gw, ISSUED, 1, Duration::from_secs(90));
    assert!(gw.log().contains("state in etcd"), "{}", gw.log());

    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", "gh/"]);
    assert!(keys.contains("gh/acme/account"), "{keys}");
    let cert_key = keys
        .lines()
        .find(|k| k.starts_with("gh/certs/"))
        .unwrap_or_else(|| panic!("no certificate in etcd: {keys}"))
        .to_owned();
    let everything = etcd.etcdctl(&["get", "--prefix", "gh/"]);
    for secret in ["BEGIN", "PRIVATE", "gw.test\"", "kid"] {
        assert!(
            !everything.contains(secret),
            "{secret:?} reached etcd in the clear"
        );
    }
    assert!(
        !gw.path().join("state/state.redb").exists(),
        "no local store on the etcd backend"
    );

    let gw = gw.restart();
    gw.wait_log("serving the stored certificate", Duration::from_secs(30));
    let root = pebble.issuing_root();
    let (tls, _) = connect(gw.addr, "web.gw.test", client(&root));
    drop(tls);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.metric(ISSUED), 0, "served from etcd, not ordered again");
    assert!(gw.log().contains("ACME account restored"), "{}", gw.log());
    let again = etcd.etcdctl(&["get", "--prefix", "--keys-only", "gh/certs/"]);
    assert!(again.contains(&cert_key), "{again}");
}

/// A node whose etcd does not answer refuses to start, in one line that names the endpoint
/// (it holds nothing yet to serve statically).
#[test]
fn etcd_unreachable_at_start_is_one_clear_line() {
    let (knot, pebble, dir, key_file) = ca_and_dns();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let config = on_etcd(
        &acme_config(&pebble, &knot, &key_file, &one_app("web", 9), ""),
        std::slice::from_ref(&endpoint),
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(gatehouse_tests::binary())
        .args(["run", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("store unavailable"))
        .unwrap_or_else(|| panic!("no clear line in:\n{err}"));
    assert!(line.contains(&endpoint), "{line}");
}
