//! The VPC as a private network between apps (a mesh), end to end in network namespaces:
//! the real `gatehouse run` in `gw`, six "CVMs" on one underlay bridge, each with a
//! userspace WireGuard daemon and `gatehouse agent` (simulated TEE). Three instances of `db`
//! run Debian's etcd, finding each other by their VPC names (`<n>.db.vpc.internal`, answered
//! by the gateway's name server) and forming one cluster over the VPC addresses; `web`
//! (`reach = ["db"]`) writes and reads through it; `other` can neither resolve nor connect.
//! One `db` instance dies: the cluster keeps quorum, the name stops returning it, and when
//! it registers again it rejoins. A sixth CVM measured outside `db`'s policy cannot join.
//! Last, a reload that lets `other` reach `db` reaches its agent within seconds.
//! Needs root; skipped otherwise.

use gatehouse_attest::simulator::SimulatorConfig;
use gatehouse_tests::netns::{ip, wireguard_ready, AgentProc, Net};
use gatehouse_tests::pki::TestCa;
use gatehouse_tests::Gateway;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOMAIN: &str = "vpc.internal";

/// One app CVM: its namespace, WireGuard interface, underlay address and agent.
struct Cvm {
    ns: String,
    wg: String,
    app: &'static str,
    state: PathBuf,
    agent: Option<AgentProc>,
    address: Option<Ipv4Addr>,
}

/// Processes killed on drop, and the per-namespace resolver files removed.
#[derive(Default)]
struct Cleanup {
    children: Vec<(String, Child)>,
    resolv: Vec<PathBuf>,
}

impl Cleanup {
    fn kill(&mut self, name: &str) {
        for (_, c) in self.children.iter_mut().filter(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.retain(|(n, _)| n != name);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in &self.resolv {
            let _ = std::fs::remove_dir_all(r);
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

/// The A records of `name` as the gateway's name server answers the CVM in `ns`.
fn dig(ns: &str, name: &str) -> Vec<Ipv4Addr> {
    let out = in_ns(
        ns,
        &[
            "kdig",
            "@10.88.0.1",
            "+short",
            "+time=2",
            "+retry=0",
            name,
            "A",
        ],
    );
    let mut ips: Vec<Ipv4Addr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ips.sort();
    ips
}

fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `etcdctl` from `ns` against `endpoints`; its stdout when it succeeded.
fn etcdctl(ns: &str, endpoints: &str, args: &[&str]) -> Option<String> {
    let mut all = vec![
        "etcdctl",
        "--endpoints",
        endpoints,
        "--dial-timeout=2s",
        "--command-timeout=4s",
    ];
    all.extend_from_slice(args);
    let out = in_ns(ns, &all);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn member_urls(ordinals: &[u32], port: u16) -> String {
    ordinals
        .iter()
        .map(|n| format!("http://{n}.db.{DOMAIN}:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the etcd member with ordinal `n` in `ns` (VPC address `addr`): it names itself
/// and its peers by their VPC names.
fn etcd(ns: &str, n: u32, addr: Ipv4Addr, data: &Path, log: &Path) -> Child {
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("db{i}=http://{i}.db.{DOMAIN}:2380"))
        .collect();
    Command::new("ip")
        .args(["netns", "exec", ns, "etcd"])
        .args(["--name", &format!("db{n}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
        .args(["--listen-client-urls", &format!("http://{addr}:2379")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://{n}.db.{DOMAIN}:2380"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://{n}.db.{DOMAIN}:2379"),
        ])
        .args(["--initial-cluster", &cluster.join(",")])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "mesh-test"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn mesh_replicated_etcd_across_attested_cvms_with_names_policy_and_rejoin() {
    if !wireguard_ready() || Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root, wireguard-go, etcd and kdig (scripts/test.sh)");
        return;
    }
    let tag = std::process::id() % 100_000;
    let mut net = Net::default();
    let mut cleanup = Cleanup::default();
    let gw_ns = format!("ghmg{tag}");
    let wg_gw = format!("wmg{tag}");
    let bridge = format!("brm{tag}");
    net.namespace(&gw_ns);
    ip(&["-n", &gw_ns, "link", "add", &bridge, "type", "bridge"]);
    ip(&["-n", &gw_ns, "addr", "add", "198.19.0.1/24", "dev", &bridge]);
    ip(&["-n", &gw_ns, "link", "set", &bridge, "up"]);
    net.wireguard(&gw_ns, &wg_gw);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let apps: [&'static str; 6] = ["db", "db", "db", "web", "other", "db"];
    let mut cvms: Vec<Cvm> = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let ns = format!("ghm{i}{tag}");
        let wg = format!("wm{i}{tag}");
        net.namespace(&ns);
        // The underlay: one bridge in the gateway's namespace, as a cloud subnet would be.
        let (a, b) = (format!("vm{i}a{tag}"), format!("vm{i}b{tag}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &ns]);
        ip(&["link", "set", &b, "netns", &gw_ns]);
        ip(&["-n", &gw_ns, "link", "set", &b, "master", &bridge]);
        ip(&["-n", &gw_ns, "link", "set", &b, "up"]);
        let underlay = format!("198.19.0.{}/24", 10 + i);
        ip(&["-n", &ns, "addr", "add", &underlay, "dev", &a]);
        ip(&["-n", &ns, "link", "set", &a, "up"]);
        net.wireguard(&ns, &wg);
        // What the CVM's resolver asks: the gateway's name server, through the tunnel.
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.88.0.1\n").unwrap();
        cleanup.resolv.push(etc);
        cvms.push(Cvm {
            ns,
            wg,
            app,
            state: d.join(format!("cvm{i}")),
            agent: None,
            address: None,
        });
    }

    let ca = TestCa::new();
    let cert = ca.write(&d, "wild", &["*.gw.test"]);
    let good = SimulatorConfig::default();
    let pinned = format!(
        "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]\n",
        gatehouse_attest::hex::encode(&good.mrtd)
    );
    std::fs::write(d.join("policy.toml"), &pinned).unwrap();
    std::fs::write(d.join("agent.toml"), "[tee]\nprovider = \"simulator\"\n").unwrap();
    std::fs::write(
        d.join("rogue.toml"),
        format!(
            "[tee]\nprovider = \"simulator\"\n[tee.simulator]\nmrtd = \"{}\"\n",
            "ee".repeat(48)
        ),
    )
    .unwrap();
    let config = format!(
        r#"
[proxy]
listen = ["127.0.0.1:8443"]
base_domains = ["gw.test"]
workers = 1
[proxy.custom_domains]
enabled = false
[tls]
certificates = [{cert}]
[tee]
provider = "simulator"

[[apps]]
id = "db"
default_port = 2379
[[apps]]
id = "web"
default_port = 8080
[[apps]]
id = "other"
default_port = 8080

[vpc]
prefix = "10.88.0.0/24"
gateway_address = "10.88.0.1"
interface = "{wg_gw}"
kind = "userspace"
handshake_stale = "6s"
lease_reclaim = "120s"
register_listen = "198.19.0.1:8444"
domain = "{DOMAIN}"
[vpc.apps.db]
policy = "policy.toml"
[vpc.apps.web]
policy = "policy.toml"
reach = ["db"]
[vpc.apps.other]
policy = "policy.toml"

[admin]
listen = "127.0.0.1:9000"
tokens = [{{ id = "ops", file = "ops.token", scope = "write" }}]
"#
    );
    std::fs::write(d.join("ops.token"), format!("{OPS}\n")).unwrap();
    std::fs::write(d.join("gatehouse.toml"), config).unwrap();
    let gw_dir = tempfile::tempdir_in(&d).unwrap();
    let config_path = d.join("gatehouse.toml");
    let gw = Gateway::spawn_wrapped(
        gw_dir,
        &["ip", "netns", "exec", &gw_ns],
        &["run", "--config", config_path.to_str().unwrap()],
    );
    gw.wait_log("VPC mesh coordinator and names on", Duration::from_secs(15));

    let agent_args = |c: &Cvm, config: &str| -> Vec<String> {
        vec![
            "--register=https://198.19.0.1:8444".into(),
            format!("--app-id={}", c.app),
            format!("--gateway-policy={}", d.join("policy.toml").display()),
            format!("--interface={}", c.wg),
            format!("--config={}", d.join(config).display()),
            format!("--state-dir={}", c.state.display()),
        ]
    };
    let start_agent = |c: &mut Cvm| {
        let args = agent_args(c, "agent.toml");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = AgentProc::start(&c.ns, &args);
        let line = agent.wait_line("registered", 1, Duration::from_secs(30));
        let addr: Ipv4Addr = line
            .split(" at ")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if let Some(before) = c.address {
            assert_eq!(addr, before, "a CVM that registers again keeps its address");
        }
        c.address = Some(addr);
        c.agent = Some(agent);
    };
    for c in cvms.iter_mut().take(5) {
        start_agent(c);
    }
    let (web, other) = (cvms[3].ns.clone(), cvms[4].ns.clone());
    let db_addrs: Vec<Ipv4Addr> = {
        let mut v: Vec<Ipv4Addr> = cvms[..3].iter().map(|c| c.address.unwrap()).collect();
        v.sort();
        v
    };

    // Names: web sees the three db instances, each also by its ordinal.
    wait(
        "web resolving db's three instances",
        Duration::from_secs(20),
        || (dig(&web, &format!("db.{DOMAIN}")) == db_addrs).then_some(()),
    );
    let by_ordinal: Vec<(u32, usize)> = (0..3u32)
        .map(|n| {
            let ips = dig(&web, &format!("{n}.db.{DOMAIN}"));
            assert_eq!(ips.len(), 1, "{n}.db: {ips:?}");
            let i = cvms.iter().position(|c| c.address == Some(ips[0])).unwrap();
            (n, i)
        })
        .collect();
    // other may not reach db: no name, and no path.
    assert!(dig(&other, &format!("db.{DOMAIN}")).is_empty());
    assert_eq!(
        dig(&other, &format!("other.{DOMAIN}")),
        vec![cvms[4].address.unwrap()]
    );

    // The replicated database: three etcd members over the VPC, found by name.
    for &(n, i) in &by_ordinal {
        let c = &cvms[i];
        let child = etcd(
            &c.ns,
            n,
            c.address.unwrap(),
            &d.join(format!("etcd{n}")),
            &d.join(format!("etcd{n}.log")),
        );
        cleanup.children.push((format!("etcd{n}"), child));
    }
    let all = member_urls(&[0, 1, 2], 2379);
    wait(
        "web writing through the etcd cluster",
        Duration::from_secs(60),
        || etcdctl(&web, &all, &["put", "greeting", "hello over the mesh"]),
    );
    let got = etcdctl(&web, &all, &["get", "greeting", "--print-value-only"]).unwrap();
    assert_eq!(got.trim(), "hello over the mesh");
    let members = etcdctl(&web, &all, &["member", "list"]).unwrap();
    assert_eq!(members.matches(", started, ").count(), 3, "{members}");
    assert!(
        members.contains(&format!("http://0.db.{DOMAIN}:2380")),
        "{members}"
    );

    // other cannot connect to a db instance either (no WireGuard peer for it anywhere).
    let direct = format!("http://{}:2379", db_addrs[0]);
    assert!(etcdctl(&other, &direct, &["get", "greeting"]).is_none());

    // Identities: web's agent keeps each peer's attested identity.
    let ids = std::fs::read_to_string(cvms[3].state.join("peers.json")).unwrap();
    let ids: serde_json::Value = serde_json::from_str(&ids).unwrap();
    for a in &db_addrs {
        let p = &ids[a.to_string()];
        assert_eq!(p["app_id"], "db", "{ids}");
        assert_eq!(
            p["measurements"]["mrtd"],
            gatehouse_attest::hex::encode(&good.mrtd)
        );
    }
    assert!(
        ids.get(cvms[4].address.unwrap().to_string()).is_none(),
        "other is not web's peer"
    );

    // One db instance dies (its etcd, agent and WireGuard): quorum holds, its name goes.
    let (n_dead, i_dead) = by_ordinal[2];
    cleanup.kill(&format!("etcd{n_dead}"));
    cvms[i_dead].agent = None;
    net.stop_wireguard(&cvms[i_dead].wg.clone());
    let alive = member_urls(&[by_ordinal[0].0, by_ordinal[1].0], 2379);
    wait(
        "a write with one member down",
        Duration::from_secs(30),
        || etcdctl(&web, &alive, &["put", "while-down", "still a quorum"]),
    );
    let dead_ip = cvms[i_dead].address.unwrap();
    wait(
        "the dead instance leaving the name",
        Duration::from_secs(30),
        || (!dig(&web, &format!("db.{DOMAIN}")).contains(&dead_ip)).then_some(()),
    );
    assert!(dig(&web, &format!("{n_dead}.db.{DOMAIN}")).is_empty());

    // It comes back: same key, same address and ordinal; its member rejoins and catches up.
    net.wireguard(&cvms[i_dead].ns.clone(), &cvms[i_dead].wg.clone());
    start_agent(&mut cvms[i_dead]);
    wait("the name returning it", Duration::from_secs(20), || {
        (dig(&web, &format!("{n_dead}.db.{DOMAIN}")) == vec![dead_ip]).then_some(())
    });
    let c = &cvms[i_dead];
    let child = etcd(
        &c.ns,
        n_dead,
        dead_ip,
        &d.join(format!("etcd{n_dead}")),
        &d.join(format!("etcd{n_dead}-again.log")),
    );
    cleanup.children.push((format!("etcd{n_dead}"), child));
    let own = member_urls(&[n_dead], 2379);
    let caught_up = wait("the member rejoining", Duration::from_secs(60), || {
        etcdctl(
            &web,
            &own,
            &["get", "while-down", "--print-value-only", "--consistency=s"],
        )
        .filter(|v| v.trim() == "still a quorum")
    });
    assert_eq!(caught_up.trim(), "still a quorum");

    // A sixth CVM measured outside db's policy cannot join at all.
    let rogue = &cvms[5];
    let args = agent_args(rogue, "rogue.toml");
    let out = Command::new("ip")
        .args(["netns", "exec", &rogue.ns])
        .arg(gatehouse_tests::binary())
        .args(["agent", "--once"])
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("registration refused: policy"), "{text}");
    assert_eq!(
        dig(&web, &format!("db.{DOMAIN}")),
        db_addrs,
        "still the three"
    );

    // A policy change reaches the agents live: a reload lets other reach db.
    let file = std::fs::read_to_string(&config_path).unwrap();
    let opened = file.replace(
        "[vpc.apps.other]\npolicy = \"policy.toml\"\n",
        "[vpc.apps.other]\npolicy = \"policy.toml\"\nreach = [\"db\"]\n",
    );
    assert_ne!(opened, file);
    std::fs::write(&config_path, opened).unwrap();
    gw.signal("HUP");
    gw.wait_log("vpc.apps.reach", Duration::from_secs(10));
    wait(
        "other resolving db after the reload",
        Duration::from_secs(20),
        || (dig(&other, &format!("db.{DOMAIN}")) == db_addrs).then_some(()),
    );
    let read = wait(
        "other reading from db after the reload",
        Duration::from_secs(30),
        || etcdctl(&other, &all, &["get", "greeting", "--print-value-only"]),
    );
    assert_eq!(read.trim(), "hello over the mesh");

    // The admin API sets who may reach whom too (stored; it replaces the file's list), and
    // the agents follow within seconds: other loses db, then gets it back from the file.
    let doc = gatehouse_tests::admin::openapi();
    let (status, body) = admin(
        &gw_ns,
        "PUT",
        "/v1/vpc/apps/other/reach",
        r#"{"reach": []}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["other"]["source"], "api", "{body}");
    assert_eq!(body["other"]["reach"], serde_json::json!([]), "{body}");
    wait("other losing db's name", Duration::from_secs(20), || {
        dig(&other, &format!("db.{DOMAIN}"))
            .is_empty()
            .then_some(())
    });
    wait(
        "other losing its path to db",
        Duration::from_secs(20),
        || {
            etcdctl(&other, &direct, &["get", "greeting"])
                .is_none()
                .then_some(())
        },
    );
    assert!(
        etcdctl(&web, &alive, &["get", "greeting"]).is_some(),
        "web keeps db"
    );
    let (status, body) = admin(
        &gw_ns,
        "PUT",
        "/v1/vpc/apps/other/reach",
        r#"{"reach": ["nope"]}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["problems"][0].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );
    let (status, body) = admin(&gw_ns, "GET", "/v1/vpc/reach", "");
    assert_eq!(status, 200);
    assert_eq!(body["web"]["source"], "config", "{body}");
    assert_eq!(body["other"]["source"], "api", "{body}");
    let answer = gatehouse_tests::admin::Answer {
        status,
        body: body.clone(),
        head: String::new(),
    };
    gatehouse_tests::admin::conforms(&doc, "GET", "/v1/vpc/reach", &answer);
    let (status, body) = admin(&gw_ns, "DELETE", "/v1/vpc/apps/other/reach", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["other"]["source"], "config", "{body}");
    assert_eq!(body["other"]["reach"], serde_json::json!(["db"]), "{body}");
    wait("other resolving db again", Duration::from_secs(20), || {
        (dig(&other, &format!("db.{DOMAIN}")) == db_addrs).then_some(())
    });
}

const OPS: &str = "ops-secret-mesh-7d21";

/// Calls the admin API (inside the gateway's namespace) with the `ops` token: status, body.
fn admin(gw_ns: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:9000{path}");
    let auth = format!("Authorization: Bearer {OPS}");
    let mut args = vec!["curl", "-s", "-m", "10", "-X", method, "-H", &auth];
    if !body.is_empty() {
        args.extend_from_slice(&["-H", "Content-Type: application/json", "--data", body]);
    }
    args.extend_from_slice(&["-w", "\n%{http_code}", &url]);
    let out = in_ns(gw_ns, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("curl's status line");
    (
        code.trim().parse().expect("an HTTP status"),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}
