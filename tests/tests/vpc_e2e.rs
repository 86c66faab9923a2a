//! The VPC end to end, in network namespaces this test makes: the real `gatehouse run` in
//! `gw` with a userspace WireGuard daemon, `gatehouse agent` (simulated TEE) in `app1` and
//! `app2`, each next to a small HTTP app bound to its VPC address only; `curl` in `gw`
//! reaches both replicas through the tunnel. Then: an agent measured outside the app's
//! policy is refused (no peer, no address); an agent whose gateway policy the gateway does
//! not meet sends nothing; a gateway restart keeps leases and routes; an agent restart keeps
//! its address; a stopped WireGuard daemon takes its replica out of rotation and back; 50
//! concurrent registrations get 50 distinct addresses, reclaimed when they never send a
//! packet. Needs root; skipped otherwise.
//! Namespaces and processes are removed by PID on every exit path.

use gatehouse_attest::pccs::{CollateralSource, Pccs, DEFAULT_PCCS};
use gatehouse_attest::policy::Policy;
use gatehouse_attest::simulator::{Simulator, SimulatorConfig};
use gatehouse_attest::QuoteProvider;
use gatehouse_tests::netns::{ip, wireguard_ready, AgentProc, Net};
use gatehouse_tests::pki::TestCa;
use gatehouse_tests::{binary, Gateway};
use gatehouse_vpc::agent::Agent;
use gatehouse_vpc::wireguard::{KeyPair, Uapi, WireGuard};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `gatehouse agent --once ARGS` in `ns`: its exit code and output.
fn agent_once(ns: &str, args: &[String]) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary())
        .args(["agent", "--once"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

/// The address in "registered shop at 10.88.0.2/24 ...".
fn address_of(line: &str) -> Ipv4Addr {
    let rest = line.split(" at ").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One HTTPS request from `ns` to the app through the gateway: the replica's name.
fn curl(ns: &str, ca: &Path) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(ca)
        .args([
            "--resolve",
            "shop.gw.test:8443:127.0.0.1",
            "https://shop.gw.test:8443/who",
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Requests until every name in `want` answered (bounded); the names seen.
fn until_seen(ns: &str, ca: &Path, want: &[&str], limit: Duration) -> HashSet<String> {
    let deadline = Instant::now() + limit;
    let mut seen = HashSet::new();
    while Instant::now() < deadline {
        if let Some(who) = curl(ns, ca) {
            seen.insert(who);
        }
        if want.iter().all(|w| seen.contains(*w)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// A log line containing `a` and the whole field `b` (`address=10.88.0.3` is not
/// `address=10.88.0.30`), after the first `skip` such lines.
fn log_has(log: &str, a: &str, b: &str, skip: usize) -> bool {
    log.lines()
        .filter(|l| l.contains(a) && l.split_whitespace().any(|f| f == b))
        .nth(skip)
        .is_some()
}

fn wait_gateway_log(gw: &Gateway, a: &str, b: &str, skip: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !log_has(&gw.log(), a, b, skip) {
        assert!(
            Instant::now() < deadline,
            "gateway never logged {a:?} with {b:?} (×{}):\n{}",
            skip + 1,
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A python HTTP server in `ns` on `addr:8080` serving `who` = `name`; its log (client
/// addresses) goes to `<dir>/<name>.log`.
fn http_app(net: &mut Net, ns: &str, addr: Ipv4Addr, name: &str, dir: &Path) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("who"), format!("{name}\n")).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            "-u",
            "-m",
            "http.server",
            "8080",
        ])
        .args(["--bind", &addr.to_string(), "--directory"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    net.keep(child);
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_join_the_vpc_with_attestation_and_receive_traffic_without_exposure_between_peers() {
    if !wireguard_ready() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (gw_ns, a1, a2) = (
        format!("ghvg{tag}"),
        format!("ghva{tag}"),
        format!("ghvb{tag}"),
    );
    let (wg_gw, wg_a1, wg_a2) = (
        format!("wgg{tag}"),
        format!("wga{tag}"),
        format!("wgb{tag}"),
    );
    let mut net = Net::default();
    for ns in [&gw_ns, &a1, &a2] {
        net.namespace(ns);
    }
    // Links: root ↔ gw (the test's own registrations), gw ↔ app1, gw ↔ app2.
    for (i, peer_ns) in [(80, None), (81, Some(&a1)), (82, Some(&a2))] {
        let (g, p) = (format!("v{i}g{tag}"), format!("v{i}p{tag}"));
        ip(&["link", "add", &g, "type", "veth", "peer", "name", &p]);
        ip(&["link", "set", &g, "netns", &gw_ns]);
        ip(&[
            "-n",
            &gw_ns,
            "addr",
            "add",
            &format!("198.18.{i}.1/24"),
            "dev",
            &g,
        ]);
        ip(&["-n", &gw_ns, "link", "set", &g, "up"]);
        let on = |args: &[&str]| match peer_ns {
            Some(ns) => ip(&[&["-n", ns.as_str()], args].concat()),
            None => ip(args),
        };
        if let Some(ns) = peer_ns {
            ip(&["link", "set", &p, "netns", ns]);
        }
        on(&["addr", "add", &format!("198.18.{i}.2/24"), "dev", &p]);
        on(&["link", "set", &p, "up"]);
    }
    net.wireguard(&gw_ns, &wg_gw);
    net.wireguard(&a1, &wg_a1);
    net.wireguard(&a2, &wg_a2);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let ca = TestCa::new();
    let cert = ca.write(&d, "wild", &["*.gw.test"]);
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    let good = SimulatorConfig::default();
    let mrtd = gatehouse_attest::hex::encode(&good.mrtd);
    // The app's policy (what an instance must run) and the agents' gateway policy: both pin
    // the simulator's default MRTD.
    let pinned = format!("insecure_trust_simulator_root = true\nmrtd = [\"{mrtd}\"]\n");
    std::fs::write(d.join("shop-policy.toml"), &pinned).unwrap();
    std::fs::write(d.join("gateway-policy.toml"), &pinned).unwrap();
    std::fs::write(
        d.join("other-gateway-policy.toml"),
        format!(
            "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]\n",
            "ab".repeat(48)
        ),
    )
    .unwrap();
    std::fs::write(d.join("agent.toml"), "[tee]\nprovider = \"simulator\"\n").unwrap();
    std::fs::write(
        d.join("rogue.toml"),
        format!(
            "[tee]\nprovider = \"simulator\"\n[tee.simulator]\nmrtd = \"{}\"\n",
            "ee".repeat(48)
        ),
    )
    .unwrap();
    let head = gateway_head(&cert);
    let config = format!(
        r#"{head}

[vpc]
prefix = "10.88.0.0/24"
gateway_address = "10.88.0.1"
interface = "{wg_gw}"
kind = "userspace"
handshake_stale = "6s"
lease_reclaim = "40s"
register_listen = "0.0.0.0:8444"
[vpc.apps.shop]
policy = "shop-policy.toml"
[vpc.apps.bank]
policy = "shop-policy.toml"

[[apps]]
id = "bank"
default_port = 8080

[admission]
allow_list = "allowed-apps"
"#
    );
    // Issue 20: `[admission]` decides after the quote: shop is listed, bank is not.
    std::fs::write(d.join("allowed-apps"), "shop\n").unwrap();
    std::fs::write(d.join("gatehouse.toml"), config).unwrap();
    let gw_dir = tempfile::tempdir_in(&d).unwrap();
    let config_path = d.join("gatehouse.toml");
    let mut gw = Gateway::spawn_wrapped(
        gw_dir,
        &["ip", "netns", "exec", &gw_ns],
        &["run", "--config", config_path.to_str().unwrap()],
    );
    gw.wait_log("VPC interface configured", Duration::from_secs(10));

    let agent_args = |ns: &str, wg: &str, state: &str, config: &str, policy: &str| {
        let (agent, state, policy) = (d.join(config), d.join(state), d.join(policy));
        let register = if ns == a1 {
            "198.18.81.1"
        } else {
            "198.18.82.1"
        };
        vec![
            format!("--register=https://{register}:8444"),
            "--app-id=shop".into(),
            format!("--gateway-policy={}", policy.display()),
            format!("--interface={wg}"),
            format!("--config={}", agent.display()),
            format!("--state-dir={}", state.display()),
        ]
    };
    let start = |ns: &str, wg: &str, state: &str| {
        let args = agent_args(ns, wg, state, "agent.toml", "gateway-policy.toml");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProc::start(ns, &args)
    };
    let limit = Duration::from_secs(30);

    // Both agents register and get distinct addresses; their apps listen on them only.
    let mut agent1 = start(&a1, &wg_a1, "state1");
    let mut agent2 = start(&a2, &wg_a2, "state2");
    let addr1 = address_of(&agent1.wait_line("registered shop at", 1, limit));
    let addr2 = address_of(&agent2.wait_line("registered shop at", 1, limit));
    assert_ne!(addr1, addr2);
    let prefix: gatehouse_config::Ipv4Prefix = "10.88.0.0/24".parse().unwrap();
    assert!(prefix.contains(addr1) && prefix.contains(addr2));
    let log1 = http_app(&mut net, &a1, addr1, "app1", &d);
    let _log2 = http_app(&mut net, &a2, addr2, "app2", &d);

    // curl in gw reaches both replicas, through the tunnel.
    let ca_pem = d.join("ca.pem");
    let seen = until_seen(&gw_ns, &ca_pem, &["app1", "app2"], limit);
    assert!(
        seen.contains("app1") && seen.contains("app2"),
        "both replicas answer: {seen:?}\n{}",
        gw.log()
    );
    // Issue 20: the admin API (inside the gateway's namespace) shows both leases, and their
    // peers with a handshake, as its document says.
    let out = Command::new("ip")
        .args(["netns", "exec", &gw_ns, "curl", "-sS", "--max-time", "10"])
        .arg("http://127.0.0.1:8001/v1/vpc")
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("admin_api /v1/vpc: {e}: {out:?}"));
    let answer = gatehouse_tests::admin::Answer {
        status: 200,
        body,
        head: String::new(),
    };
    let doc = gatehouse_tests::admin::openapi();
    gatehouse_tests::admin::conforms(&doc, "GET", "/v1/vpc", &answer);
    let leased: HashSet<String> = answer.body["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        leased,
        HashSet::from([addr1.to_string(), addr2.to_string()])
    );
    let shaken = answer.body["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["last_handshake"].is_u64())
        .count();
    assert!(
        shaken >= 2,
        "peers with a handshake: {:?}",
        answer.body["peers"]
    );
    let app_log = std::fs::read_to_string(&log1).unwrap();
    assert!(
        app_log.contains("10.88.0.1 - - ") && app_log.contains("GET /who"),
        "the app sees the gateway's VPC address: {app_log}"
    );

    // Isolation between tenants does not hang on a host sysctl: with forwarding switched on
    // in the gateway's namespace, app1 still cannot reach app2 through the gateway. Off,
    // then on: a new namespace inherits the host's `all` setting (1 where Docker runs), and
    // writing the value it already has does not reach the interfaces.
    for value in ["0", "1"] {
        ip(&[
            "netns",
            "exec",
            &gw_ns,
            "sysctl",
            "-qw",
            &format!("net.ipv4.ip_forward={value}"),
        ]);
    }
    let field = format!("interface={wg_gw}");
    wait_gateway_log(&gw, "IP forwarding was turned on", &field, 0, limit);
    let across = Command::new("ip")
        .args(["netns", "exec", &a1, "curl", "-s", "--max-time", "3"])
        .arg(format!("http://{addr2}:8080/who"))
        .output()
        .unwrap();
    assert!(
        !across.status.success(),
        "app1 reached app2 through the gateway: {}",
        String::from_utf8_lossy(&across.stdout)
    );
    let seen = until_seen(&gw_ns, &ca_pem, &["app1", "app2"], limit);
    assert_eq!(seen.len(), 2, "the gateway still reaches both: {seen:?}");

    // An instance measured outside the app's policy: refused by name, no peer, no address.
    let rogue = agent_args(&a2, "wgnone", "rogue", "rogue.toml", "gateway-policy.toml");
    let (code, text) = agent_once(&a2, &rogue);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("registration refused: policy:") && text.contains("mrtd"),
        "{text}"
    );
    let gw_wg = Uapi::new(&wg_gw);
    assert_eq!(gw_wg.state().await.unwrap().1.len(), 2, "no peer for it");

    // An app the policy admits but `[admission]` does not list: refused after its quote.
    let mut bank = agent_args(&a2, "wgnone", "bank", "agent.toml", "gateway-policy.toml");
    bank[1] = "--app-id=bank".into();
    let (code, text) = agent_once(&a2, &bank);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("registration refused: admission:") && text.contains("not in the allow list"),
        "admission_denies_an_unlisted_app: {text}"
    );
    assert_eq!(gw_wg.state().await.unwrap().1.len(), 2, "no peer for it");

    // A gateway that does not meet the agent's gateway policy gets nothing.
    let registrations = gw.log().matches("instance registered").count();
    let picky = agent_args(
        &a2,
        "wgnone",
        "picky",
        "agent.toml",
        "other-gateway-policy.toml",
    );
    let (code, text) = agent_once(&a2, &picky);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("gateway not trusted (nothing sent)"),
        "{text}"
    );
    assert_eq!(
        gw.log().matches("instance registered").count(),
        registrations
    );
    assert!(!gw.log().contains("registration refused: nonce"));

    // A gateway restart keeps both leases and both routes.
    gw = gw.restart();
    gw.wait_log("VPC interface configured", Duration::from_secs(10));
    assert!(gw.log().contains("peers=2"), "{}", gw.log());
    let seen = until_seen(&gw_ns, &ca_pem, &["app1", "app2"], limit);
    assert_eq!(seen.len(), 2, "both routes after a restart: {seen:?}");

    // An agent restart keeps its address.
    drop(agent1);
    let mut agent1 = start(&a1, &wg_a1, "state1");
    let again = address_of(&agent1.wait_line("registered shop at", 1, limit));
    assert_eq!(again, addr1);

    // app1's WireGuard daemon stops: out of rotation after the threshold; app2 serves all.
    net.stop_wireguard(&wg_a1);
    let a1_field = format!("address={addr1}");
    wait_gateway_log(&gw, "out of rotation", &a1_field, 0, limit);
    for _ in 0..6 {
        assert_eq!(curl(&gw_ns, &ca_pem).as_deref(), Some("app2"));
    }
    // Started again: the agent configures it again and app1 is back.
    net.wireguard(&a1, &wg_a1);
    agent1.wait_line("registered shop at", 2, Duration::from_secs(90));
    wait_gateway_log(&gw, "VPC instance in rotation", &a1_field, 1, limit);
    let seen = until_seen(&gw_ns, &ca_pem, &["app1"], limit);
    assert!(seen.contains("app1"), "app1 back in rotation: {seen:?}");
    drop(agent2);

    // 50 concurrent registrations (over the root ↔ gw link): 50 distinct addresses.
    let sim = Arc::new(Simulator::new(good).unwrap());
    let pccs = Pccs::new(DEFAULT_PCCS, Duration::from_secs(1)).unwrap();
    let collateral = Arc::new(CollateralSource::new(Some(sim.collateral().unwrap()), pccs));
    let policy = Policy::parse(&pinned).unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let agent = Agent {
                register_url: "https://198.18.80.1:8444".into(),
                app_id: "shop".into(),
                gateway_policy: policy.clone(),
                provider: sim.clone(),
                collateral: collateral.clone(),
                wg: Arc::new(Uapi::new("unused")),
                key: KeyPair::generate().unwrap(),
                identity_file: None,
            };
            tokio::spawn(async move { agent.register().await.map(|(r, _)| r.address) })
        })
        .collect();
    let mut addresses = HashSet::new();
    for t in tasks {
        addresses.insert(t.await.unwrap().expect("registered"));
    }
    assert_eq!(addresses.len(), 50);
    assert!(!addresses.contains(&addr1) && !addresses.contains(&addr2));
    assert!(!addresses.contains(&Ipv4Addr::new(10, 88, 0, 1)));
    assert_eq!(gw_wg.state().await.unwrap().1.len(), 52);

    // None of the 50 ever sends a packet: after lease_reclaim their peers and addresses are
    // given back; app1 and app2 (their daemons keep sending keepalives) keep theirs.
    let deadline = Instant::now() + Duration::from_secs(90);
    while gw_wg.state().await.unwrap().1.len() > 2 {
        assert!(
            Instant::now() < deadline,
            "idle leases reclaimed:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_gateway_log(&gw, "lease reclaimed", "app=shop", 49, limit);
    assert!(!log_has(&gw.log(), "lease reclaimed", &a1_field, 0));
    let seen = until_seen(&gw_ns, &ca_pem, &["app1", "app2"], limit);
    assert_eq!(seen.len(), 2, "both replicas still served: {seen:?}");
}

/// The gateway's listener, the `shop` app, its certificate `cert` and the simulated TEE.
fn gateway_head(cert: &str) -> String {
    format!(
        r#"
[proxy]
listen = ["127.0.0.1:8443"]
base_domains = ["gw.test"]
allow_local_instances = true
workers = 1
[proxy.timeouts]
connect = "1s"
[proxy.custom_domains]
enabled = false

[[apps]]
id = "shop"
default_port = 8080

[tls]
certificates = [{cert}]

[tee]
provider = "simulator"

[admin]
listen = "127.0.0.1:8001"
insecure_no_auth = true
"#
    )
}

/// One gateway node of the cluster VPC test: its namespace, WireGuard interface, VPC address,
/// WireGuard endpoint, etcd URL and join listener.
struct ClusterNode {
    ns: String,
    wg: String,
    gw: &'static str,
    endpoint: &'static str,
    etcd: String,
    join: &'static str,
}

/// A gateway node's config for the cluster VPC test: static certificate, VPC address `gw`
/// with `endpoint`, state in the TLS etcd at `etcd`, join listener on `join`, the app's
/// `policy`.
fn cluster_node_config(node: &ClusterNode, cert: &str, ca: &Path, policy: &Path) -> String {
    let ClusterNode {
        wg,
        gw,
        endpoint,
        etcd,
        join,
        ..
    } = node;
    let head = gateway_head(cert);
    format!(
        r#"{head}

[store]
path = "state"
backend = "etcd"
[store.etcd]
endpoints = ["{etcd}"]
ca_file = {ca:?}
prefix = "vpc-cluster/"

[cluster]
listen = "{join}"

[vpc]
prefix = "10.89.0.0/24"
gateway_address = "{gw}"
endpoint = "{endpoint}"
interface = "{wg}"
kind = "userspace"
handshake_stale = "6s"
register_listen = "0.0.0.0:8444"
[vpc.apps.shop]
policy = {policy:?}
"#
    )
}

/// Issue 19 test 7: two gateway nodes (each in its own namespace, with its own VPC address
/// and WireGuard key) share one etcd over TLS. An agent registers through node A; the answer
/// lists node B as a peer for B's address, B adds the instance as a peer from the store's
/// watch, and requests through B reach the app, which sees B's VPC address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_vpc_an_instance_registered_through_one_node_is_reached_through_another() {
    if !wireguard_ready() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (ga, gb, app) = (
        format!("ghca{tag}"),
        format!("ghcb{tag}"),
        format!("ghcp{tag}"),
    );
    let (wg_a, wg_b, wg_app) = (
        format!("wca{tag}"),
        format!("wcb{tag}"),
        format!("wcp{tag}"),
    );
    let mut net = Net::default();
    for ns in [&ga, &gb, &app] {
        net.namespace(ns);
    }
    net.link(
        &format!("c0{tag}"),
        None,
        "198.18.90.1/24",
        Some(&ga),
        "198.18.90.2/24",
    );
    net.link(
        &format!("c1{tag}"),
        None,
        "198.18.91.1/24",
        Some(&gb),
        "198.18.91.2/24",
    );
    net.link(
        &format!("c2{tag}"),
        Some(&ga),
        "198.18.92.1/24",
        Some(&app),
        "198.18.92.2/24",
    );
    net.link(
        &format!("c3{tag}"),
        Some(&gb),
        "198.18.93.1/24",
        Some(&app),
        "198.18.93.2/24",
    );
    net.link(
        &format!("c4{tag}"),
        Some(&ga),
        "198.18.94.1/24",
        Some(&gb),
        "198.18.94.2/24",
    );
    net.wireguard(&ga, &wg_a);
    net.wireguard(&gb, &wg_b);
    net.wireguard(&app, &wg_app);

    let ca = TestCa::new();
    let etcd = gatehouse_tests::etcd::EtcdCluster::single_tls(&["198.18.90.1", "198.18.91.1"], &ca);
    let urls: Vec<String> = etcd.members[0]
        .client_url
        .split(',')
        .map(str::to_owned)
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let cert = ca.write(&d, "wild", &["*.gw.test"]);
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    let mrtd = gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd);
    let pinned = format!("insecure_trust_simulator_root = true\nmrtd = [\"{mrtd}\"]\n");
    std::fs::write(d.join("shop-policy.toml"), &pinned).unwrap();
    std::fs::write(d.join("gateway-policy.toml"), &pinned).unwrap();
    std::fs::write(d.join("agent.toml"), "[tee]\nprovider = \"simulator\"\n").unwrap();
    let ca_file = d.join("ca.pem");
    let nodes = [
        ClusterNode {
            ns: ga.clone(),
            wg: wg_a.clone(),
            gw: "10.89.0.1",
            endpoint: "198.18.92.1:51820",
            etcd: urls[0].clone(),
            join: "198.18.94.1:8445",
        },
        ClusterNode {
            ns: gb.clone(),
            wg: wg_b.clone(),
            gw: "10.89.0.2",
            endpoint: "198.18.93.1:51820",
            etcd: urls[1].clone(),
            join: "198.18.94.2:8445",
        },
    ];
    let policy = d.join("shop-policy.toml");
    let mut gws = Vec::new();
    for node in &nodes {
        let config = cluster_node_config(node, &cert, &ca_file, &policy);
        // Each node in its own directory: its state (and its copy of the cluster key) apart.
        let node_dir = tempfile::tempdir_in(&d).unwrap();
        let file = node_dir.path().join("gatehouse.toml");
        std::fs::write(&file, config).unwrap();
        let gw = Gateway::spawn_wrapped(
            node_dir,
            &["ip", "netns", "exec", &node.ns],
            &["run", "--config", file.to_str().unwrap()],
        );
        gw.wait_log("VPC interface configured", Duration::from_secs(30));
        gws.push(gw);
    }
    let (a, b) = (&gws[0], &gws[1]);
    assert!(a.log().contains("founded the cluster"), "{}", a.log());
    assert!(b.log().contains("joined the cluster"), "{}", b.log());

    // Whoever runs etcd forges a gateway record (their key, their endpoint): it does not
    // open under the cluster key, so no agent is told to take it as a peer.
    let forged = serde_json::json!({
        "address": "10.89.0.9", "node": "intruder", "listen_port": 51820,
        "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "endpoint": "198.18.92.2:51999", "private_key": "",
    });
    etcd.etcdctl(&[
        "put",
        "vpc-cluster/vpc/gateways/10.89.0.9",
        &forged.to_string(),
    ]);

    let args = [
        "--register=https://198.18.92.1:8444".to_owned(),
        "--app-id=shop".into(),
        format!(
            "--gateway-policy={}",
            d.join("gateway-policy.toml").display()
        ),
        format!("--interface={wg_app}"),
        format!("--config={}", d.join("agent.toml").display()),
        format!("--state-dir={}", d.join("agent-state").display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = AgentProc::start(&app, &args);
    let limit = Duration::from_secs(30);
    let addr = address_of(&agent.wait_line("registered shop at", 1, limit));
    assert_eq!(
        addr,
        Ipv4Addr::new(10, 89, 0, 3),
        "the gateway nodes' addresses are never leased"
    );
    let app_log = http_app(&mut net, &app, addr, "app1", &d);

    // The agent has both nodes as peers: A for the prefix, B for its own address; not the
    // forged one.
    let (_, peers) = Uapi::new(&wg_app).state().await.unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.public_key != [1u8; 32]),
        "the forged gateway is not a peer"
    );
    // B added the instance from the watch, without a registration of its own.
    let deadline = Instant::now() + limit;
    while Uapi::new(&wg_b).state().await.unwrap().1.is_empty() {
        assert!(
            Instant::now() < deadline,
            "B never added the instance:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !b.log().contains("instance registered"),
        "registered through A only"
    );

    let seen = until_seen(&gb, &ca_file, &["app1"], limit);
    assert!(
        seen.contains("app1"),
        "a request through B reaches the instance:\n{}",
        b.log()
    );
    let log = std::fs::read_to_string(&app_log).unwrap();
    assert!(
        log.contains("10.89.0.2 - - "),
        "the app saw node B's VPC address: {log}"
    );
    let seen = until_seen(&ga, &ca_file, &["app1"], limit);
    assert!(seen.contains("app1"), "and through A");
}
