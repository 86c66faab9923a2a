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
    let config = format!(
        r#"
[proxy]
listen = ["127.0.0.1:0"]
base_domains = ["gw.test"]
allow_local_instances = true
[proxy.custom_domains]
nameservers = ["{}"]
[[apps]]
id = "web"
[[apps.instances]]
address = "127.0.0.1"
[[apps]]
id = "secure"
[[apps.instances]]
address = "127.0.0.1"
[admin]
listen = "127.0.0.1:0"
insecure_no_auth = true
{SIMULATED_TEE}
[tls]
certificates = [{cert}]
"#,
        knot.addr
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
