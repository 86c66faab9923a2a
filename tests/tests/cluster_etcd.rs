//! The gateway on the etcd backend (issue 19), through the real binary: Debian's etcd on
//! loopback, Pebble as the CA, Knot as the DNS server.

use gatehouse_tests::acme_env::{
    acme_config, alpn_config, client, connect, echo_app, one_app, wait_metric,
};
use gatehouse_tests::ari::AriShim;
use gatehouse_tests::etcd::EtcdCluster;
use gatehouse_tests::knot::{free_port, Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use gatehouse_tests::Gateway;
use serde_json::json;
use std::time::Duration;
use std::time::Instant;

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
    // Every node on this machine joins through its own loopback port.
    out + "\n[cluster]\nlisten = \"127.0.0.1:0\"\njoin_timeout = \"20s\"\n"
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
    // Everything but the node's registration, which is public (its attestation bundle names
    // the domains it serves, as /.well-known does).
    let everything: String = keys
        .lines()
        .filter(|k| !k.is_empty() && !k.starts_with("gh/locks/nodes/"))
        .map(|k| etcd.etcdctl(&["get", k, "--print-value-only"]))
        .collect();
    assert!(!everything.is_empty());
    // Each needle holds a character base64 never produces (sealed data is base64 or binary).
    for secret in [
        "-----BEGIN",
        "PRIVATE KEY",
        "gw.test\"",
        "\"kid\"",
        "\"d\":",
    ] {
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
    let _keys = dir; // the TSIG key file the config names
    let (err, _dir) = gatehouse_tests::run_until_refused(&config, Duration::from_secs(60));
    let line = err
        .lines()
        .find(|l| l.contains("store unavailable"))
        .unwrap_or_else(|| panic!("no clear line in:\n{err}"));
    assert!(line.contains(&endpoint), "{line}");
}

/// Knot, Pebble, a node directory and the config of a node serving the echo app (ACME by
/// DNS-01) on `etcd`, and the echo app's address.
fn echo_on(
    etcd: &EtcdCluster,
) -> (
    Knot,
    Pebble,
    tempfile::TempDir,
    String,
    std::net::SocketAddr,
) {
    let (knot, pebble, dir, key_file) = ca_and_dns();
    let echo = echo_app();
    let config = on_etcd(
        &acme_config(&pebble, &knot, &key_file, &one_app("echo", echo.port()), ""),
        &etcd.endpoints(),
    );
    (knot, pebble, dir, config, echo)
}

/// The leaf a node serves for the echo app, once it serves one signed by `root`.
fn served_within(gw: &Gateway, root: &str, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            connect(gw.addr, "echo.gw.test", client(root)).1.to_vec()
        }));
        match got {
            Ok(leaf) => return leaf,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            Err(_) => panic!("no certificate served within {limit:?}:\n{}", gw.log()),
        }
    }
}

/// The first leaf `gw` serves that is not `old` (bounded by `limit`).
fn served_other_than(gw: &Gateway, root: &str, old: &[u8], limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        let leaf = served_within(gw, root, Duration::from_secs(10));
        if leaf != old {
            return leaf;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `gw` serves `want` (bounded by `limit`).
fn serves(gw: &Gateway, root: &str, want: &[u8], limit: Duration) {
    let deadline = Instant::now() + limit;
    while served_within(gw, root, Duration::from_secs(10)) != want {
        assert!(Instant::now() < deadline, "never served it:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The index in `nodes` of the node holding `gw.test`'s renewal lock.
fn renewer(etcd: &EtcdCluster, nodes: &[Gateway]) -> usize {
    let holder = etcd.etcdctl(&["get", "gh/locks/renew/gw.test", "--print-value-only"]);
    let pid: u32 = holder.trim().rsplit('-').next().unwrap().parse().unwrap();
    nodes
        .iter()
        .position(|n| n.pid() == pid)
        .unwrap_or_else(|| panic!("the lock holder {holder:?} is one of the nodes"))
}

fn issued(nodes: &[&Gateway]) -> u64 {
    nodes.iter().map(|n| n.metric(ISSUED)).sum()
}

/// Issue 19 tests 1 and 2: three gateway nodes on a three-member etcd share one ACME account;
/// the CA sees one order per certificate whichever nodes run, every node serves it; when the
/// CA asks for a renewal, one node renews (the renewal lock); killed with SIGKILL after the CA
/// finalized, another node takes the renewal over once the lock's lease runs out, resumes the
/// stored order instead of ordering again, and every surviving node serves the new certificate.
#[test]
fn cluster_one_order_per_renewal_and_a_killed_renewer_is_taken_over() {
    let etcd = EtcdCluster::start(3);
    let (knot, pebble, dir, key_file) = ca_and_dns();
    let shim = AriShim::start(&pebble, json!({"window": "future", "retry_after": 1}));
    let echo = echo_app();
    let config = acme_config(&pebble, &knot, &key_file, &one_app("echo", echo.port()), "")
        .replace(&pebble.directory, &shim.directory);
    let config = on_etcd(&config, &etcd.endpoints());
    let mut nodes: Vec<Gateway> = vec![Gateway::start_in(dir, &config)];
    for _ in 0..2 {
        nodes.push(Gateway::start(&config));
    }
    let root = pebble.issuing_root();
    let first: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| served_within(n, &root, Duration::from_secs(90)))
        .collect();
    assert!(
        first.iter().all(|l| *l == first[0]),
        "every node serves the one certificate"
    );
    let all: Vec<&Gateway> = nodes.iter().collect();
    assert_eq!(issued(&all), 1, "one node ordered it");
    assert_eq!(shim.named("new-order").len(), 1, "{:?}", shim.events());
    let created: Vec<_> = shim
        .named("new-account")
        .into_iter()
        .filter(|e| e["status"] == 201)
        .collect();
    assert_eq!(
        created.len(),
        1,
        "the CA saw one account created: {created:?}"
    );
    let accounts = etcd.etcdctl(&["get", "--prefix", "--keys-only", "gh/acme/"]);
    assert_eq!(
        accounts.lines().filter(|l| !l.is_empty()).count(),
        1,
        "one account: {accounts}"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n.log().contains("renewal in hand elsewhere")),
        "the other nodes waited for the lock holder"
    );

    // The CA asks for a renewal now; the renewer is killed after the CA finalized its order.
    shim.set(json!({"window": "past", "retry_after": 1, "hold_finalize": true}));
    shim.wait("held", 1, Duration::from_secs(60));
    let orders_before = shim.named("new-order").len();
    let at = renewer(&etcd, &nodes);
    let mut renewer = nodes.remove(at);
    let issued_before = issued(&nodes.iter().collect::<Vec<_>>());
    renewer.kill();
    shim.set(json!({"window": "future", "retry_after": 1}));

    let second: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| served_other_than(n, &root, &first[0], Duration::from_secs(60)))
        .collect();
    assert!(
        second.iter().all(|l| *l != first[0]),
        "the renewal was completed"
    );
    assert!(
        second.iter().all(|l| *l == second[0]),
        "every node serves it"
    );
    assert_eq!(
        shim.named("new-order").len(),
        orders_before,
        "the order of the killed node was resumed, not ordered again: {:?}",
        shim.events()
    );
    let survivors: Vec<&Gateway> = nodes.iter().collect();
    assert_eq!(
        issued(&survivors),
        issued_before + 1,
        "one survivor completed it"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n.log().contains("resumed the pending order")),
        "{}",
        nodes[0].log()
    );
}

/// `gatehouse cluster status` against the cluster's etcd.
fn cluster_status(config: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(gatehouse_tests::binary())
        .args(["cluster", "status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn member_pids(status: &serde_json::Value) -> Vec<u32> {
    let mut pids: Vec<u32> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["info"]["name"].as_str().unwrap();
            name.rsplit('-').next().unwrap().parse().unwrap()
        })
        .collect();
    pids.sort();
    pids
}

/// Issue 19: `gatehouse cluster status` lists the members with their heartbeats, a killed
/// node leaves the member list within seconds (its registration's lease runs out); and test
/// 5: with two of three etcd members stopped every node keeps serving its certificate, says
/// so in its log and `/metrics`, and recovers when etcd returns.
#[test]
fn cluster_status_and_a_node_that_loses_etcd_keeps_serving() {
    let mut etcd = EtcdCluster::start(3);
    let (_knot, pebble, dir, config, echo) = echo_on(&etcd);
    let shim = AriShim::start(&pebble, json!({"window": "future", "retry_after": 1}));
    let config = config.replace(&pebble.directory, &shim.directory);
    let a = Gateway::start_in(dir, &config);
    let mut b = Gateway::start(&config);
    let config_file = a.path().join("gatehouse.toml");
    let root = pebble.issuing_root();
    let leaf = served_within(&a, &root, Duration::from_secs(90));
    assert_eq!(served_within(&b, &root, Duration::from_secs(30)), leaf);

    let mut both = vec![a.pid(), b.pid()];
    both.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = cluster_status(&config_file);
        if member_pids(&s) == both || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(member_pids(&status), both, "{status:#}");
    // Issue 20: the admin API shows the same members, and an app made through one node's API
    // is served by the other (the records reach it through the etcd watch).
    use gatehouse_tests::admin::{call, conforms, openapi};
    let nodes = call(a.admin.unwrap(), "GET", "/v1/nodes", None, None);
    conforms(&openapi(), "GET", "/v1/nodes", &nodes);
    assert_eq!(
        nodes.body["members"].as_array().unwrap().len(),
        2,
        "{:?}",
        nodes.body
    );
    let made = json!({ "id": "made", "default_port": echo.port(), "instances": [{ "address": "127.0.0.1" }] });
    let created = call(a.admin.unwrap(), "POST", "/v1/apps", None, Some(&made));
    assert_eq!(created.status, 201, "{:?}", created.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(b.admin.unwrap(), "GET", "/v1/apps/made", None, None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the app made on a never reached b"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A replacement and a removal travel the same way: b publishes the one app each event
    // names (Control::publish_app), not the whole store.
    let mut capped = made.clone();
    capped["max_connections"] = json!(7);
    let replaced = call(
        a.admin.unwrap(),
        "PUT",
        "/v1/apps/made",
        None,
        Some(&capped),
    );
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    let on_b = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = call(b.admin.unwrap(), "GET", "/v1/apps/made", None, None);
            if r.status == want && (want != 200 || r.body["max_connections"] == 7) {
                return;
            }
            assert!(Instant::now() < deadline, "b still shows {:?}", r.body);
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    on_b(200);
    let kept = call(
        a.admin.unwrap(),
        "POST",
        "/v1/apps",
        None,
        Some(
            &json!({ "id": "kept", "default_port": echo.port(), "instances": [{ "address": "127.0.0.1" }] }),
        ),
    );
    assert_eq!(kept.status, 201, "{:?}", kept.body);
    assert_eq!(
        call(a.admin.unwrap(), "DELETE", "/v1/apps/made", None, None).status,
        200
    );
    on_b(404);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(b.admin.unwrap(), "GET", "/v1/apps/kept", None, None).status != 200 {
        assert!(Instant::now() < deadline, "the second app never reached b");
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in status["members"].as_array().unwrap() {
        let beat = m["last_heartbeat"].as_u64().expect("a heartbeat");
        assert!(status["read_at"].as_u64().unwrap() - beat <= 10, "{m}");
        assert!(!m["info"]["listen"].as_array().unwrap().is_empty(), "{m}");
        let bundle = &m["info"]["attestation"];
        assert!(
            bundle["quote"].is_string() && bundle["report_data"].is_string(),
            "each node registers its attestation bundle: {m}"
        );
    }
    let text = std::process::Command::new(gatehouse_tests::binary())
        .args(["cluster", "status", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("members: 2"), "{text}");

    let b_pid = b.pid();
    b.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cluster_status(&config_file);
        if member_pids(&s) == vec![a.pid()] {
            let departed = s["departed"].as_array().unwrap();
            assert!(
                departed
                    .iter()
                    .any(|d| d[0].as_str().unwrap().ends_with(&format!("-{b_pid}"))),
                "the killed node's last heartbeat stays visible: {s:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed node is still a member: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Two of three etcd members down: no quorum. The node keeps serving and says so.
    assert_eq!(a.metric("gatehouse_store_available"), 1);
    etcd.members[1].stop();
    etcd.members[2].stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.metric("gatehouse_store_available") != 0 {
        assert!(
            Instant::now() < deadline,
            "the outage never showed:\n{}",
            a.metrics()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(a.metric("gatehouse_store_heartbeat_failures_total") >= 1);
    assert!(
        a.log()
            .contains("store unavailable, serving what this node holds"),
        "{}",
        a.log()
    );
    // The CA asks for a renewal during the outage: the node cannot take the renewal lock,
    // orders nothing, says so once, and keeps serving.
    let orders = shim.named("new-order").len();
    // Past until one more order: the renewal after the outage is asked for exactly once.
    shim.set(json!({"window": "past", "retry_after": 1, "until_orders": orders + 1}));
    a.wait_log("renewal waits for the store", Duration::from_secs(30));
    for _ in 0..5 {
        assert_eq!(
            served_within(&a, &root, Duration::from_secs(5)),
            leaf,
            "fail static: the held certificate is served"
        );
    }
    assert_eq!(
        shim.named("new-order").len(),
        orders,
        "no order without the lock"
    );
    etcd.members[1].restart();
    etcd.members[2].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.metric("gatehouse_store_available") != 1 {
        assert!(Instant::now() < deadline, "never recovered:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(a.log().contains("store reachable"), "{}", a.log());
    // The renewal resumes once the store answers.
    shim.wait("new-order", orders + 1, Duration::from_secs(60));
    shim.set(json!({"window": "future", "retry_after": 1}));
    served_other_than(&a, &root, &leaf, Duration::from_secs(60));
    assert_eq!(shim.named("new-order").len(), orders + 1, "one order");
}

/// A node's config for the custom domains `domains` by TLS-ALPN-01, its listener on `port`
/// (0: any), state in `etcd`.
fn alpn_on_etcd(
    pebble: &Pebble,
    knot: &Knot,
    port: u16,
    app: u16,
    domains: &str,
    etcd: &EtcdCluster,
) -> String {
    let config = alpn_config(pebble, knot, port, app, domains, "") + "[store]\npath = \"state\"\n";
    on_etcd(&config, &etcd.endpoints())
}

/// Issue 19: TLS-ALPN-01 answers live in the store, so the CA's validation may land on any
/// node. Node A orders `shop.gw.test`; the CA validates at node B's listener (the only one it
/// connects to here); B answers the challenge A published, and A gets the certificate.
#[test]
fn cluster_tls_alpn_validation_is_answered_by_another_node() {
    let etcd = EtcdCluster::single();
    let knot = Knot::start("test", &["shop.gw 60 A 127.0.0.1"]);
    let port_b = free_port();
    let pebble = Pebble::start(&PebbleOptions {
        tls_port: port_b,
        ..PebbleOptions::new(knot.addr)
    });
    let app = echo_app();
    // B orders nothing (no domains): it only follows the store.
    let b = Gateway::start(&alpn_on_etcd(&pebble, &knot, port_b, app.port(), "", &etcd));
    let a = Gateway::start(&alpn_on_etcd(
        &pebble,
        &knot,
        0,
        app.port(),
        "\"shop.gw.test\"",
        &etcd,
    ));
    wait_metric(&a, ISSUED, 1, Duration::from_secs(60));
    assert!(
        b.metric("gatehouse_acme_tls_alpn_answered_total") >= 1,
        "the validation reached B and B answered:\n{}",
        b.log()
    );
    assert_eq!(a.metric("gatehouse_acme_tls_alpn_answered_total"), 0);
    let (tls, _) = connect(a.addr, "shop.gw.test", client(&pebble.issuing_root()));
    drop(tls);
    let left = etcd.etcdctl(&["get", "--prefix", "--keys-only", "gh/challenges/"]);
    assert!(
        left.trim().is_empty(),
        "the challenge was withdrawn: {left}"
    );
}

/// Issue 19 test 6: the first node founds the cluster key in its TEE, a second node with the
/// same measurements gets it over mutual RA-TLS and serves the shared certificate. A node
/// whose simulated MRTD differs is refused by name and holds no cluster key: with a policy
/// that would accept the members it asks and a member refuses it; with the default policy
/// (its own measurements) it does not trust the members and asks nothing.
#[test]
fn cluster_join_is_attested_and_a_node_with_another_mrtd_is_refused() {
    let etcd = EtcdCluster::single();
    let (_knot, pebble, dir, config, _echo) = echo_on(&etcd);
    let a = Gateway::start_in(dir, &config);
    assert!(a.log().contains("founded the cluster"), "{}", a.log());
    let b = Gateway::start(&config);
    assert!(
        b.log().contains("joined the cluster"),
        "B got the key from A: {}",
        b.log()
    );
    let root = pebble.issuing_root();
    let leaf = served_within(&a, &root, Duration::from_secs(90));
    assert_eq!(served_within(&b, &root, Duration::from_secs(30)), leaf);
    assert!(a.path().join("state/cluster-key.sealed").exists());
    assert!(b.path().join("state/cluster-key.sealed").exists());
    let genesis = etcd.etcdctl(&["get", "gh/cluster/genesis", "--print-value-only"]);
    assert!(genesis.contains("\"key_id\""), "{genesis}");

    let other = config.replace(
        "provider = \"simulator\"\n",
        &format!(
            "provider = \"simulator\"\n[tee.simulator]\nmrtd = \"{}\"\n",
            "ab".repeat(48)
        ),
    );
    assert_ne!(other, config);
    let trusting = other.replace(
        "[cluster]\n",
        "[cluster]\npolicy_file = \"trust-any.toml\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trust-any.toml"),
        "insecure_trust_simulator_root = true\n",
    )
    .unwrap();
    let trusting = trusting.replace(
        "policy_file = \"trust-any.toml\"",
        &format!("policy_file = {:?}", dir.path().join("trust-any.toml")),
    );
    let (err, rogue) = gatehouse_tests::run_until_refused(&trusting, Duration::from_secs(60));
    let line = err
        .lines()
        .find(|l| l.contains("cluster join refused by"))
        .unwrap_or_else(|| panic!("no refusal in:\n{err}"));
    assert!(line.contains("mrtd"), "the refusal names the check: {line}");
    assert!(
        !rogue.path().join("state/cluster-key.sealed").exists(),
        "the refused node holds no cluster key"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.log() + &b.log()).contains("cluster join refused") {
        assert!(Instant::now() < deadline, "the member logged no refusal");
        std::thread::sleep(Duration::from_millis(200));
    }

    let distrustful = other.replace("join_timeout = \"20s\"", "join_timeout = \"3s\"");
    let (err, rogue) = gatehouse_tests::run_until_refused(&distrustful, Duration::from_secs(60));
    assert!(
        err.contains("no cluster member handed over the cluster key")
            && err.contains("fails the cluster policy"),
        "{err}"
    );
    assert!(!rogue.path().join("state/cluster-key.sealed").exists());
}

/// Issue 19 test 3: the renewer is paused (SIGSTOP) after the CA finalized its order, past
/// its lock's lease; the other node takes the lock over, resumes the stored order and
/// publishes. Resumed (SIGCONT), the paused node completes its download but its publish is
/// refused (the fence: its lock is gone), and it serves what the store holds.
#[test]
fn cluster_a_renewer_paused_past_its_lease_cannot_publish() {
    let etcd = EtcdCluster::single();
    let (_knot, pebble, dir, config, _echo) = echo_on(&etcd);
    let shim = AriShim::start(&pebble, json!({"window": "future", "retry_after": 1}));
    let config = config.replace(&pebble.directory, &shim.directory);
    let mut nodes = vec![Gateway::start_in(dir, &config), Gateway::start(&config)];
    let root = pebble.issuing_root();
    let first = served_within(&nodes[0], &root, Duration::from_secs(90));
    assert_eq!(
        served_within(&nodes[1], &root, Duration::from_secs(30)),
        first
    );

    shim.set(json!({"window": "past", "retry_after": 1, "hold_finalize": true}));
    shim.wait("held", 1, Duration::from_secs(60));
    let at = renewer(&etcd, &nodes);
    let paused = nodes.remove(at);
    let other = &nodes[0];
    paused.signal("STOP");
    // The held answer goes out now and waits in the paused node's socket.
    shim.set(json!({"window": "future", "retry_after": 1}));

    let second = served_other_than(other, &root, &first, Duration::from_secs(60));
    assert!(
        other.log().contains("resumed the pending order"),
        "{}",
        other.log()
    );

    paused.signal("CONT");
    paused.wait_log("lost the renewal lock", Duration::from_secs(30));
    serves(&paused, &root, &second, Duration::from_secs(30));
    assert_eq!(
        served_within(other, &root, Duration::from_secs(10)),
        second,
        "the refused publish changed nothing"
    );
}

/// The README's cluster: the three configs of `examples/cluster`, one command each, on one
/// etcd (the test's, in place of 127.0.0.1:2379): the first node founds the cluster key, the
/// other two join over RA-TLS, `gatehouse cluster status` lists all three and the key.
#[test]
fn cluster_readme_example_three_nodes_one_command_each() {
    let etcd = EtcdCluster::single();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster");
    let nodes: Vec<Gateway> = (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(examples.join(format!("node{i}.toml"))).unwrap();
            let text = text.replace("http://127.0.0.1:2379", &etcd.endpoints()[0]);
            Gateway::start(&text)
        })
        .collect();
    assert!(nodes[0].log().contains("founded the cluster"));
    for n in &nodes[1..] {
        assert!(n.log().contains("joined the cluster"), "{}", n.log());
    }
    let config = nodes[0].path().join("gatehouse.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new(gatehouse_tests::binary())
            .args(["cluster", "status", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("members: 3") {
            assert!(text.contains("cluster key: "), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes and deletes `n` filler records of 4 KiB under `gh/certs/` (changes a watcher of
/// `certs/` must take), then compacts etcd's history at the latest revision.
fn flood_and_compact(etcd: &EtcdCluster, n: usize) {
    use gatehouse_store::{Etcd, EtcdOptions, Store};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Etcd::connect(EtcdOptions {
            endpoints: etcd.endpoints(),
            prefix: "gh/".into(),
            tls: None,
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        let filler = vec![b'x'; 4096];
        for i in 0..n {
            store
                .put(&format!("certs/zz-filler-{i}"), &filler)
                .await
                .unwrap();
        }
        for i in 0..n {
            store.delete(&format!("certs/zz-filler-{i}")).await.unwrap();
        }
    });
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_u64().unwrap();
    etcd.etcdctl(&["compact", &revision.to_string()]);
}

/// Issue 19 test 4: node B is frozen (SIGSTOP) while node A renews the certificate and
/// megabytes of other changes pass under the prefix B watches; etcd compacts its history, so
/// B's watch cannot be caught up. Resumed, B's watch is told its history is gone, re-lists,
/// and B serves A's new certificate: the nodes converge.
#[test]
fn cluster_etcd_compaction_while_a_node_lags_and_the_nodes_converge() {
    let etcd = EtcdCluster::single();
    let (_knot, pebble, dir, config, _echo) = echo_on(&etcd);
    let shim = AriShim::start(&pebble, json!({"window": "future", "retry_after": 1}));
    let config = config.replace(&pebble.directory, &shim.directory);
    let a = Gateway::start_in(dir, &config);
    let b = Gateway::start(&config);
    let root = pebble.issuing_root();
    let first = served_within(&a, &root, Duration::from_secs(90));
    assert_eq!(served_within(&b, &root, Duration::from_secs(30)), first);

    let b_issued = b.metric(ISSUED);
    b.signal("STOP");
    let orders = shim.named("new-order").len();
    shim.set(json!({"window": "past", "retry_after": 1}));
    shim.wait("new-order", orders + 1, Duration::from_secs(60));
    shim.set(json!({"window": "future", "retry_after": 1}));
    let second = served_other_than(&a, &root, &first, Duration::from_secs(60));
    flood_and_compact(&etcd, 2000);

    b.signal("CONT");
    b.wait_log("was compacted", Duration::from_secs(30));
    serves(&b, &root, &second, Duration::from_secs(30));
    assert_eq!(b.metric(ISSUED), b_issued, "B ordered nothing");
}
