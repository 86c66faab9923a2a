//! Custom domains through a real DNS server (Knot): the TXT record maps a domain to an app.

use gatehouse_tests::knot::Knot;
use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind, echo, read_line, tls_sni_echo};
use gatehouse_tests::Gateway;
use gatehouse_tests::SIMULATED_TEE;

#[tokio::test]
async fn txt_record_routes_a_custom_domain() {
    let ca = TestCa::new();
    let web = bind([127, 0, 0, 1], 0).await.unwrap();
    let web_port = web.local_addr().unwrap().port();
    echo(web, "web");
    let secure = bind([127, 0, 0, 1], 0).await.unwrap();
    let secure_port = secure.local_addr().unwrap().port();
    let app_cert = ca.issue(&["pass.custom.test"]);
    tls_sni_echo(secure, ca.server(&app_cert));
    let txt = |target: String| format!("_gatehouse-app-address.{target}");
    let knot = Knot::start(
        "custom.test",
        &[
            &txt(format!("shop 60 TXT \"web:{web_port}\"")),
            &txt(format!(
                "pass 60 TXT \"secure:{secure_port};mode=passthrough\""
            )),
            &txt("bad 60 TXT \"Web:x\"".into()),
            &txt("two 60 TXT \"web\"".into()),
            &txt("two 60 TXT \"secure\"".into()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.write(dir.path(), "shop", &["shop.custom.test", "*.custom.test"]);
    let config = config(
        &format!("nameservers = [\"{}\"]", knot.addr),
        &[("web", web_port), ("secure", secure_port)],
        &cert,
    );
    let gw = Gateway::start_in(dir, &config);

    // terminate at the gateway, relay to web on the TXT's port
    for _ in 0..3 {
        let mut tls = tls_connect(gw.addr, "shop.custom.test", ca.client(&[]))
            .await
            .unwrap();
        assert_eq!(read_line(&mut tls).await, "web");
    }
    // passthrough to the app, which sees its own SNI
    let mut tls = tls_connect(gw.addr, "pass.custom.test", ca.client(&[]))
        .await
        .unwrap();
    assert_eq!(read_line(&mut tls).await, "sni=pass.custom.test");
    // no record, a malformed record, two records: refused with unrecognized_name
    for name in ["none.custom.test", "bad.custom.test", "two.custom.test"] {
        let err = tls_connect(gw.addr, name, ca.client(&[]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nrecogni"), "{name}: {err}");
    }
    assert_eq!(
        gw.wait_metric(
            "gatehouse_connections_rejected_total{reason=\"no_route\"}",
            3
        ),
        3
    );
    let log = gw.log();
    assert!(
        log.contains("no TXT record at _gatehouse-app-address.none.custom.test."),
        "{log}"
    );
    assert!(log.contains("2 TXT records, expected exactly one"), "{log}");
}

/// A gateway config routing custom domains through `resolver` (TOML lines for
/// `[proxy.custom_domains]`) to the apps in `apps`, serving `cert`.
/// `apps`: (id, the port the TXT records name, declared as its default port).
fn config(resolver: &str, apps: &[(&str, u16)], cert: &str) -> String {
    let apps: String = apps
        .iter()
        .map(|(id, port)| format!("[[apps]]\nid = \"{id}\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n"))
        .collect();
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\nbase_domains = [\"gw.test\"]\nallow_local_instances = true\n\
         [proxy.custom_domains]\n{resolver}\n{apps}[admin]\nlisten = \"127.0.0.1:0\"\ninsecure_no_auth = true\n\
         {SIMULATED_TEE}\n[tls]\ncertificates = [{cert}]\n"
    )
}

/// A real Unbound answering DNS over TLS from a local zone, under a certificate of the test CA.
struct UnboundDot {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl UnboundDot {
    fn start(ca: &TestCa, tls_name: &str, records: &[String]) -> UnboundDot {
        let dir = tempfile::tempdir().unwrap();
        let issued = ca.issue(&[tls_name]);
        std::fs::write(dir.path().join("dot.pem"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("dot.key"), &issued.key_pem).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let local: String = records
            .iter()
            .map(|r| format!("  local-data: '{r}'\n"))
            .collect();
        let conf = format!(
            "server:\n  interface: 127.0.0.1@{port}\n  tls-port: {port}\n  tls-service-key: \"{d}/dot.key\"\n  tls-service-pem: \"{d}/dot.pem\"\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  local-zone: \"dot.test.\" static\n{local}remote-control:\n  control-enable: no\n",
            d = dir.path().display()
        );
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = std::process::Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stderr(std::fs::File::create(dir.path().join("unbound.log")).unwrap())
            .spawn()
            .expect("unbound (scripts/test.sh installs it)");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "unbound did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        UnboundDot {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for UnboundDot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 16 §9: custom domains resolved over DNS over TLS (the host cannot forge answers): the
/// TXT record from a DoT resolver routes; a resolver whose certificate does not carry the
/// configured name is not believed (the domain is refused).
#[tokio::test]
async fn security_custom_domains_over_dns_over_tls() {
    let ca = TestCa::new();
    let web = bind([127, 0, 0, 1], 0).await.unwrap();
    let web_port = web.local_addr().unwrap().port();
    echo(web, "web");
    let dot = UnboundDot::start(
        &ca,
        "dns.test",
        &[format!(
            "_gatehouse-app-address.shop.dot.test. 60 IN TXT \"web:{web_port}\""
        )],
    );
    for (tls_name, routes) in [("dns.test", true), ("other.test", false)] {
        let dir = tempfile::tempdir().unwrap();
        let cert = ca.write(dir.path(), "shop", &["shop.dot.test"]);
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        let resolver = format!(
            "dns_over_tls = [\"{}#{tls_name}\"]\ndns_tls_ca_file = \"ca.pem\"",
            dot.addr
        );
        let config = config(&resolver, &[("web", web_port)], &cert);
        let gw = Gateway::start_in(dir, &config);
        let result = tls_connect(gw.addr, "shop.dot.test", ca.client(&[])).await;
        match routes {
            true => assert_eq!(read_line(&mut result.unwrap()).await, "web"),
            false => {
                let err = result.unwrap_err();
                assert!(err.to_string().contains("nrecogni"), "{err}");
                let log = gw.wait_log("TXT lookup for", std::time::Duration::from_secs(5));
                assert!(
                    log.contains("_gatehouse-app-address.shop.dot.test"),
                    "{log}"
                );
            }
        }
    }
}
