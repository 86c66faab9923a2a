//! Crash consistency: the real binary against Pebble and Knot, killed with SIGKILL at random
//! moments (while it starts, creates its ACME account, orders, writes the certificate, and
//! renews and swaps it), restarted each time. After every kill the state must be whole:
//! the store opens; the account URI, once stored, never changes (a CAA `accounturi` naming it
//! stays valid); every stored certificate unseals, chains, and is for its sealed key; its
//! generation never goes back; and the restarted gateway serves the certificate the store
//! held. Prints how many kills hit each moment.
//!
//! `GATEHOUSE_CRASH_KILLS` sets the number of kills (default 50).

use gatehouse_store::{Embedded, Sealer, Store};
use gatehouse_tests::acme_env::{acme_config, client, echo_app, one_app};
use gatehouse_tests::knot::{free_port, Knot, TsigSecret};
use gatehouse_tests::pebble::{Pebble, PebbleOptions};
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the store holds after a kill.
struct Held {
    account: Option<String>,
    /// Per certificate record: generation and leaf.
    certs: BTreeMap<String, (u64, CertificateDer<'static>)>,
}

/// Opens the store the way the binary does and checks every invariant on it.
async fn inspect(dir: &Path, config: &gatehouse_config::Config) -> Held {
    let file = dir.join("state/state.redb");
    if !file.exists() {
        // Killed before the store was made.
        return Held {
            account: None,
            certs: BTreeMap::new(),
        };
    }
    let store = Embedded::open(&file).expect("the store opens after a kill");
    let sealer: Arc<dyn Sealer> = gatehouse::attestation::sealer(config, dir)
        .await
        .expect("the sealer");
    let directory = &config.acme.as_ref().unwrap().directory;
    let account = gatehouse_certbot::account::stored_uri(directory, &store, sealer.as_ref())
        .await
        .expect("the stored account unseals");
    let mut certs = BTreeMap::new();
    for (key, _) in store.list(gatehouse_certbot::stored::PREFIX).await.unwrap() {
        let id = &key[gatehouse_certbot::stored::PREFIX.len()..];
        let issued = gatehouse_certbot::stored::Issued::load(id, &store, sealer.as_ref(), 0)
            .await
            .unwrap_or_else(|e| panic!("{key} unseals and parses: {e}"))
            .expect("listed, so stored");
        issued
            .key
            .certified(issued.chain.clone())
            .unwrap_or_else(|e| panic!("{key}: the stored certificate is for its sealed key: {e}"));
        assert!(!issued.names.is_empty(), "{key}");
        certs.insert(key.clone(), (issued.generation, issued.chain[0].clone()));
    }
    Held { account, certs }
}

/// The leaf a verified handshake for `sni` gets, if one completes.
fn served_leaf(
    gw: SocketAddr,
    sni: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Option<CertificateDer<'static>> {
    let tcp = TcpStream::connect_timeout(&gw, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let conn =
        rustls::ClientConnection::new(tls, ServerName::try_from(sni.to_owned()).ok()?).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    Some(s.conn.peer_certificates()?[0].clone().into_owned())
}

/// Where the process was when it was killed, from its log.
fn moment(log: &str, renewing: bool) -> &'static str {
    let has = |s: &str| log.contains(s);
    let after = |later: &str, earlier: &str| match (log.rfind(later), log.rfind(earlier)) {
        (Some(l), Some(e)) => l > e,
        _ => false,
    };
    if !has("ACME account") {
        return "start-up and account creation";
    }
    if renewing {
        if !has("renewal asked for") {
            return "renewal requested, not yet started";
        }
        if after("certificate issued and live", "renewal asked for") {
            return "after the renewal swap";
        }
        return "during a renewal (order, finalize, store write, swap)";
    }
    if has("certificate issued and live") {
        return "after the first certificate was stored";
    }
    if has("serving the stored certificate") || has("serving a newer stored certificate") {
        return "serving a stored certificate";
    }
    if has("resumed the pending order") || has("ordering a certificate") {
        return "during an order (challenge, finalize, download, store write)";
    }
    "account ready, before the order"
}

/// `gatehouse run --config <config>`, its output to `log`; inside `ns` if given (`ip netns
/// exec` execs the binary, so the child's pid is the gateway's).
fn spawn_in(ns: Option<&str>, binary: &Path, config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn spawn(binary: &Path, config: &Path, log: &Path) -> Child {
    spawn_in(None, binary, config, log)
}

fn sigkill(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_consistency_sigkill_at_random_moments_loses_nothing() {
    let kills: usize = std::env::var("GATEHOUSE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, &key.secret_b64).unwrap();
    let app = echo_app();
    let (port, admin_port) = (free_port(), free_port());
    let text = acme_config(&pebble, &knot, &key_file, &one_app("web", app.port()), "")
        .replacen(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{admin_port}\""),
            1,
        );
    assert!(text.contains(&port.to_string()) && text.contains(&admin_port.to_string()));
    let run = Run {
        text,
        knot: knot.addr,
        gw: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        tls: client(&pebble.issuing_root()),
        binary: gatehouse_tests::binary(),
    };
    // Three lives, each from an empty state: the early moments (account, first order) come
    // once per life, so each life starts with short delays that grow.
    let mut rng = fastrand::Rng::with_seed(0x6b696c6c);
    let mut moments: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut served_checks = 0;
    let lives = 3;
    for life in 0..lives {
        let d = dir.path().join(format!("life{life}"));
        std::fs::create_dir_all(&d).unwrap();
        let n = kills / lives + usize::from(life < kills % lives);
        served_checks += run.life(&d, n, &mut rng, &mut moments).await;
        // Killed orders leave no challenge records behind: what is in the zone is at most
        // one order's (apex and wildcard) per life (each life is another state, so another
        // ledger).
        let left = run.challenge_records();
        assert!(
            left <= 2 * (life + 1),
            "{left} _acme-challenge records in the zone after life {life}"
        );
    }
    let total: usize = moments.values().sum();
    eprintln!("crash consistency: {total} kills in {lives} lives, {served_checks} restarts checked for the served certificate");
    for (m, count) in &moments {
        eprintln!("  {count:>3}  {m}");
    }
    assert_eq!(total, kills);
    assert!(
        moments.len() >= 5,
        "the kills hit too few moments: {moments:?}"
    );
}

/// One gateway's setup for the ACME kills.
struct Run {
    text: String,
    knot: SocketAddr,
    gw: SocketAddr,
    admin: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    binary: PathBuf,
}

impl Run {
    /// `kills` kills and restarts from an empty state in `d`, then a last start left to serve;
    /// counts the moments hit; returns how many restarts had their served certificate checked.
    async fn life(
        &self,
        d: &Path,
        kills: usize,
        rng: &mut fastrand::Rng,
        moments: &mut BTreeMap<&'static str, usize>,
    ) -> usize {
        let config_path = d.join("gatehouse.toml");
        std::fs::write(&config_path, &self.text).unwrap();
        let config = gatehouse_config::Config::from_toml(&self.text, d).unwrap();
        let mut first_account: Option<String> = None;
        let mut generations: BTreeMap<String, u64> = BTreeMap::new();
        let mut held: Option<Held> = None;
        let mut served_checks = 0;
        for n in 0..kills {
            let log_path: PathBuf = d.join(format!("gatehouse.log.{n}"));
            let mut child = spawn(&self.binary, &config_path, &log_path);
            let stored_leaf = held
                .as_ref()
                .and_then(|h| h.certs.values().next().map(|(_, leaf)| leaf.clone()));
            // Once a certificate exists, half the runs check what is served, ask for a
            // renewal and kill during it; the others kill at a random moment from the start
            // (early while nothing is stored: account creation, the first order).
            let renewing = stored_leaf.is_some() && rng.bool();
            let mut served = None;
            if renewing {
                served = Some(self.serving(&log_path, Duration::from_secs(20)));
                self.renew();
                std::thread::sleep(Duration::from_millis(rng.u64(0..3000)));
            } else if stored_leaf.is_none() {
                let cap = (150 + 350 * n as u64).min(4000);
                std::thread::sleep(Duration::from_millis(rng.u64(0..cap)));
            } else {
                std::thread::sleep(Duration::from_millis(rng.u64(0..4000)));
            }
            sigkill(&mut child);
            let log = std::fs::read_to_string(&log_path).unwrap();
            assert!(!log.contains("panicked"), "run {n} panicked:\n{log}");
            *moments.entry(moment(&log, renewing)).or_default() += 1;

            let h = inspect(d, &config).await;
            if let Some(first) = &first_account {
                assert_eq!(
                    h.account.as_ref(),
                    Some(first),
                    "run {n}: the stored account changed"
                );
            } else {
                first_account = h.account.clone();
            }
            for (key, (generation, _)) in &h.certs {
                let before = generations.insert(key.clone(), *generation).unwrap_or(0);
                assert!(
                    *generation >= before,
                    "run {n}: {key} went from generation {before} to {generation}"
                );
            }
            // What the restarted gateway served is what the store held when it started, or
            // what this run stored itself (a pending order resumed at start-up).
            if let Some(leaf) = served {
                let now_stored = h.certs.values().any(|(_, l)| *l == leaf);
                assert!(
                    stored_leaf.as_ref() == Some(&leaf) || now_stored,
                    "run {n}: the restarted gateway served a certificate the store never held"
                );
                served_checks += 1;
            }
            held = Some(h);
        }

        // A last start, left to finish: it serves what the store holds, under the same account.
        let log_path = d.join("gatehouse.log.final");
        let mut child = spawn(&self.binary, &config_path, &log_path);
        // Settled: the same certificate served 2 s apart, no order under way (a renewal a
        // kill interrupted may be finished by this start).
        let deadline = Instant::now() + Duration::from_secs(90);
        let leaf = loop {
            let a = self.serving(&log_path, Duration::from_secs(60));
            std::thread::sleep(Duration::from_secs(2));
            let b = self.serving(&log_path, Duration::from_secs(60));
            let log = std::fs::read_to_string(&log_path).unwrap();
            let ordering = log.rfind("ordering a certificate");
            let done = ["certificate issued and live", "certificate order failed"]
                .iter()
                .filter_map(|m| log.rfind(m))
                .max();
            if a == b && ordering <= done {
                break b;
            }
            assert!(Instant::now() < deadline, "never settled:\n{log}");
        };
        sigkill(&mut child);
        let h = inspect(d, &config).await;
        assert!(
            h.certs.values().any(|(_, l)| *l == leaf),
            "the served certificate is one the store holds"
        );
        assert!(h.account.is_some(), "an account was stored");
        if first_account.is_some() {
            assert_eq!(h.account, first_account);
        }
        served_checks
    }

    /// How many TXT records `_acme-challenge.gw.test` holds (asked over TCP: no truncation).
    fn challenge_records(&self) -> usize {
        let out = Command::new("kdig")
            .arg(format!("@{}", self.knot.ip()))
            .args(["-p", &self.knot.port().to_string(), "+tcp", "+short"])
            .args(["_acme-challenge.gw.test", "TXT"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// The leaf served once a verified handshake completes (within `limit`).
    fn serving(&self, log: &Path, limit: Duration) -> CertificateDer<'static> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leaf) = served_leaf(self.gw, "web.gw.test", self.tls.clone()) {
                return leaf;
            }
            if Instant::now() > deadline {
                // The run before this one (the kill that led here) and this one.
                let dir = log.parent().unwrap();
                let mut logs: Vec<_> = std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.to_string_lossy().contains("gatehouse.log."))
                    .collect();
                logs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
                let tail: Vec<String> = logs
                    .iter()
                    .rev()
                    .take(2)
                    .rev()
                    .map(|p| {
                        format!(
                            "== {}\n{}",
                            p.display(),
                            std::fs::read_to_string(p).unwrap()
                        )
                    })
                    .collect();
                panic!("not serving:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks for a renewal through the admin API (the listener serves the stored certificate
    /// before ACME has its targets: retried briefly).
    fn renew(&self) {
        let list = gatehouse_tests::admin::call(self.admin, "GET", "/v1/certificates", None, None);
        let id = list.body[0]["id"]
            .as_str()
            .expect("a certificate id")
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let renew = gatehouse_tests::admin::call(
                self.admin,
                "POST",
                &format!("/v1/certificates/{id}/renew"),
                None,
                None,
            );
            if renew.status < 300 {
                return;
            }
            assert!(Instant::now() < deadline, "{} {}", renew.status, renew.body);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The window the kills above can only hit by luck: the CA made the account, the process died
/// before storing its credentials. The key was stored first, so the next start finds the same
/// account (one account at the CA, the URI CAA pins unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_consistency_an_account_made_but_not_stored_is_found_again() {
    let knot = Knot::start("test", &[]);
    let pebble = Pebble::start(&PebbleOptions::new(knot.addr));
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
    let sealer =
        gatehouse_store::AesGcmSealer::load_or_create(&dir.path().join("seal.key")).unwrap();
    let settings = gatehouse_certbot::AccountSettings {
        directory: pebble.directory.clone(),
        contact: vec!["mailto:ops@gw.test".into()],
        ca_file: Some(pebble.api_ca.clone()),
        eab: None,
    };
    // What the killed process did: made (and stored) the key, and had the CA make the account.
    let pkcs8 = gatehouse_certbot::account::account_key(&pebble.directory, &store, &sealer)
        .await
        .unwrap();
    let key = instant_acme::Key::from_pkcs8_der(rustls::pki_types::PrivatePkcs8KeyDer::from(
        pkcs8.as_slice(),
    ))
    .unwrap();
    let pair = (
        key,
        rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.to_vec().into()),
    );
    let (made, _) = instant_acme::Account::builder_with_root(&pebble.api_ca)
        .unwrap()
        .create_from_key(pair, pebble.directory.clone())
        .await
        .unwrap();
    assert!(
        gatehouse_certbot::account::stored_uri(&pebble.directory, &store, &sealer)
            .await
            .unwrap()
            .is_none(),
        "the credentials were never stored"
    );
    // The next start: the same account, now stored.
    let (account, created) = gatehouse_certbot::account::load_or_create(&settings, &store, &sealer)
        .await
        .unwrap();
    assert_eq!(account.id(), made.id(), "a second account was made");
    assert!(created);
    let stored = gatehouse_certbot::account::stored_uri(&pebble.directory, &store, &sealer)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(made.id()));
    // And it stays: restored, not made again.
    let (again, created) = gatehouse_certbot::account::load_or_create(&settings, &store, &sealer)
        .await
        .unwrap();
    assert_eq!(again.id(), made.id());
    assert!(!created);
}

/// The VPC's side: the gateway (in its own namespace, with a real userspace WireGuard) is
/// killed at random moments while CVMs register, some again with the keys they had; after
/// each kill no address is leased twice, no key holds two addresses, ordinals are unique per
/// app. At the end every CVM registers once more (one lease each, each with its ordinal), then
/// none of them ever sends a packet: every lease is reclaimed within the reclaim time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_consistency_vpc_registrations_and_reclaim_survive_sigkill() {
    use gatehouse_attest::pccs::{CollateralSource, Pccs, DEFAULT_PCCS};
    use gatehouse_attest::simulator::{Simulator, SimulatorConfig};
    use gatehouse_attest::QuoteProvider;
    use gatehouse_tests::netns::{wireguard_ready, Net};
    use gatehouse_vpc::agent::Agent;
    use gatehouse_vpc::leases::{Lease, Leases, CLAIMING};
    use gatehouse_vpc::wireguard::{KeyPair, Uapi};
    use std::collections::HashSet;

    if !wireguard_ready() {
        eprintln!("skipped: needs root and wireguard-go");
        return;
    }
    let kills: usize = std::env::var("GATEHOUSE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(25, |n: usize| n / 2);
    let tag = std::process::id() % 100_000;
    let (ns, wg) = (format!("ghck{tag}"), format!("wgk{tag}"));
    let mut net = Net::default();
    net.namespace(&ns);
    net.link(
        &format!("vk{tag}"),
        Some(&ns),
        "198.18.95.1/24",
        None,
        "198.18.95.2/24",
    );
    net.wireguard(&ns, &wg);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let ca = gatehouse_tests::pki::TestCa::new();
    let cert = ca.write(&d, "wild", &["*.gw.test"]);
    let good = SimulatorConfig::default();
    let policy_text = format!(
        "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]\n",
        gatehouse_attest::hex::encode(&good.mrtd)
    );
    std::fs::write(d.join("policy.toml"), &policy_text).unwrap();
    let text = format!(
        r#"
[proxy]
listen = ["127.0.0.1:8443"]
base_domains = ["gw.test"]
workers = 1
[proxy.custom_domains]
enabled = false
[[apps]]
id = "shop"
default_port = 8080
[[apps]]
id = "db"
default_port = 5432
[tls]
certificates = [{cert}]
[tee]
provider = "simulator"
[admin]
listen = "127.0.0.1:8001"
insecure_no_auth = true
[vpc]
prefix = "10.89.0.0/24"
gateway_address = "10.89.0.1"
interface = "{wg}"
kind = "userspace"
handshake_stale = "3s"
lease_reclaim = "6s"
register_listen = "198.18.95.1:8444"
[vpc.apps.shop]
policy = "policy.toml"
[vpc.apps.db]
policy = "policy.toml"
[store]
path = "state"
"#
    );
    let config_path = d.join("gatehouse.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = gatehouse_config::Config::from_toml(&text, &d).unwrap();
    let vpc = config.vpc.clone().unwrap();
    let binary = gatehouse_tests::binary();
    let spawn = |log: &Path| spawn_in(Some(&ns), &binary, &config_path, log);

    let sim = Arc::new(Simulator::new(good).unwrap());
    let pccs = Pccs::new(DEFAULT_PCCS, Duration::from_secs(1)).unwrap();
    let collateral = Arc::new(CollateralSource::new(Some(sim.collateral().unwrap()), pccs));
    let gateway_policy = gatehouse_attest::policy::Policy::parse(&policy_text).unwrap();
    let keys: Vec<(String, [u8; 32])> = (0..12)
        .map(|i| {
            let app = if i % 3 == 0 { "db" } else { "shop" };
            (app.to_owned(), *KeyPair::generate().unwrap().private())
        })
        .collect();
    let agent = |i: usize| Agent {
        register_url: "https://198.18.95.1:8444".into(),
        app_id: keys[i].0.clone(),
        gateway_policy: gateway_policy.clone(),
        provider: sim.clone(),
        collateral: collateral.clone(),
        wg: Arc::new(Uapi::new("unused")),
        key: KeyPair::from_private(&keys[i].1).unwrap(),
        identity_file: None,
    };
    let check = |leases: &[Lease], when: &str| {
        let addresses: HashSet<_> = leases.iter().map(|l| l.address).collect();
        assert_eq!(
            addresses.len(),
            leases.len(),
            "{when}: an address leased twice: {leases:?}"
        );
        assert!(!addresses.contains(&vpc.gateway_address), "{when}");
        let mut ordinals = HashSet::new();
        for l in leases.iter().filter(|l| l.ordinal != CLAIMING) {
            assert!(
                ordinals.insert((&l.app_id, l.ordinal)),
                "{when}: ordinal {} of {} twice: {leases:?}",
                l.ordinal,
                l.app_id
            );
        }
    };
    let open = || async {
        let file = d.join("state/state.redb");
        if !file.exists() {
            return Vec::new(); // killed before the store was made
        }
        let store: Arc<dyn Store> = Arc::new(
            Embedded::open(&d.join("state/state.redb")).expect("the store opens after a kill"),
        );
        let sealer = gatehouse::attestation::sealer(&config, &d).await.unwrap();
        Leases::new(store, sealer, vpc.prefix, vec![vpc.gateway_address])
            .all()
            .await
            .unwrap()
    };

    let mut rng = fastrand::Rng::with_seed(0x76706b);
    let mut registered = 0;
    let mut before_listening = 0;
    for n in 0..kills {
        let log_path = d.join(format!("gatehouse.log.{n}"));
        let mut child = spawn(&log_path);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let a = agent(rng.usize(0..keys.len()));
                tokio::spawn(async move {
                    // Until the listener is up (the kill may come first).
                    for _ in 0..40 {
                        if let Ok(r) = a.register().await {
                            return Some(r.0.address);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    None
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(0..2500))).await;
        sigkill(&mut child);
        for t in tasks {
            t.abort();
            if let Ok(Some(_)) = t.await {
                registered += 1;
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(!log.contains("panicked"), "run {n} panicked:\n{log}");
        if !log.contains("VPC registration on") {
            before_listening += 1;
        }
        check(&open().await, &format!("after kill {n}"));
    }

    // Every CVM registers once more: one lease each, each with its ordinal.
    let log_path = d.join("gatehouse.log.final");
    let mut child = spawn(&log_path);
    let mut mine = HashSet::new();
    for i in 0..keys.len() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            match agent(i).register().await {
                Ok((r, _)) => break r.address,
                Err(e) => {
                    assert!(Instant::now() < deadline, "CVM {i} cannot register: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(mine.insert(address), "{address} given twice");
    }
    // None of them ever sends a packet: every lease is reclaimed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "curl",
                "-s",
                "-m",
                "5",
                "http://127.0.0.1:8001/v1/vpc",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["leases"].as_array().is_some_and(|l| l.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases not reclaimed: {v}\n{}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sigkill(&mut child);
    let left = open().await;
    assert!(left.is_empty(), "orphaned leases: {left:?}");
    eprintln!(
        "crash consistency (VPC): {kills} kills ({before_listening} before the listener was up), {registered} registrations completed between kills, {} CVMs registered at the end, every lease reclaimed",
        keys.len()
    );
}
