use super::*;
use std::net::IpAddr;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/nonexistent"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems(),
    }
}

#[test]
fn http_mode_parses() {
    let c = parse("[[apps]]\nid = \"a\"\nmode = \"http\"").unwrap();
    assert_eq!(c.apps[0].mode, AppMode::Http);
}

#[test]
fn http_section_and_health_check_parse() {
    let c = parse(
        "[proxy.http]\nforwarded = \"append\"\nredirect_listen = \"127.0.0.1:8080\"\nmax_request_body = 10\n\
         [[apps]]\nid = \"a\"\nmode = \"http\"\n[apps.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"",
    )
    .unwrap();
    assert_eq!(c.proxy.http.forwarded, ForwardedMode::Append);
    assert_eq!(
        c.proxy.http.redirect_listen,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(c.proxy.http.max_request_body, 10);
    assert_eq!(c.proxy.http.max_header_bytes, 64 * 1024);
    let hc = c.apps[0].health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_str(), hc.interval, hc.fall, hc.rise),
        ("/healthz", Duration::from_secs(1), 3, 2)
    );
    assert_eq!(hc.timeout, Duration::from_millis(500));
    assert_eq!(hc.protocol, HealthProtocol::Http1);
    let c = parse("[[apps]]\nid = \"a\"\n[apps.health_check]\npath = \"/\"\nprotocol = \"h2c\"")
        .unwrap();
    assert_eq!(
        c.apps[0].health_check.as_ref().unwrap().protocol,
        HealthProtocol::H2c
    );
}

#[test]
fn empty_document_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.proxy.listen, vec!["0.0.0.0:443".parse().unwrap()]);
    assert_eq!(c.proxy.timeouts.handshake, Duration::from_secs(5));
    assert_eq!(c.proxy.timeouts.idle, Duration::from_secs(600));
    assert_eq!(c.proxy.custom_domains.txt_prefix, "_gatehouse-app-address");
    assert!(c.apps.is_empty());
    assert!(c.admin.is_none());
}

#[test]
fn full_document_parses() {
    let c = parse(
        r#"
[proxy]
listen = ["127.0.0.1:8443", "[::1]:8443"]
base_domains = ["GW.Example.com", "other.test"]
workers = 2
proxy_protocol_inbound = true
proxy_protocol_trusted = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
[proxy.limits]
max_connections_per_source = 64
unlimited_sources = ["10.0.0.5"]
[proxy.timeouts]
handshake = "2s"
idle = "1m 30s"
[proxy.custom_domains]
txt_prefix = "_dstack-app-address"
nameservers = ["127.0.0.1:5353"]

[[apps]]
id = "my-app"
default_port = 8080
max_connections = 10
ports = [8080, 22]
proxy_protocol = "v2"
[[apps.instances]]
address = "10.0.0.2"
[[apps.instances]]
address = "fd00::2"

[admin]
listen = "127.0.0.1:8001"
insecure_no_auth = true
"#,
    )
    .unwrap();
    assert_eq!(c.proxy.base_domains, vec!["gw.example.com", "other.test"]);
    assert_eq!(c.proxy.timeouts.idle, Duration::from_secs(90));
    assert_eq!(c.proxy.timeouts.connect, Duration::from_secs(3));
    let app = &c.apps[0];
    assert_eq!(app.proxy_protocol, Some(ProxyProtocolVersion::V2));
    assert_eq!(
        app.instances[1].address,
        "fd00::2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(app.mode, AppMode::Tcp);
    assert_eq!(c.proxy.proxy_protocol_trusted.len(), 3);
    assert!(c.proxy.proxy_protocol_trusted[1].contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
    assert_eq!(c.proxy.limits.max_connections_per_source, 64);
    assert_eq!(c.proxy.limits.app_share_per_source, 0.5);
    assert_eq!(c.proxy.timeouts.linger, Duration::from_secs(10));
}

/// Each bad input and the one problem it must produce, with its key path.
#[test]
fn each_problem_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("[proxy]\nlisten = [\"10.0.0.1\"]", "proxy.listen: \"10.0.0.1\" is not a socket address (missing port)"),
        ("[proxy]\nlisten = [\"nope:1\"]", "proxy.listen: \"nope:1\" is not a socket address"),
        ("[proxy]\nlisten = []", "proxy.listen: at least one listener is required"),
        ("[proxy]\nbase_domains = [\"gw.test.\"]", "proxy.base_domains[0]: \"gw.test.\" must not end with '.'"),
        ("[proxy]\nbase_domains = [\"a..b\"]", "proxy.base_domains[0]: \"a..b\" has an invalid label \"\""),
        ("[proxy]\nbase_domains = [\"a.b\", \"A.B\"]", "proxy.base_domains[1]: \"A.B\" is listed twice"),
        ("[proxy]\nworkrs = 1", "proxy.workrs: unknown field `workrs`"),
        ("[proxy.timeouts]\nidle = \"0s\"", "proxy.timeouts.idle: must be more than 0s"),
        ("[proxy.timeouts]\nlinger = \"0s\"", "proxy.timeouts.linger: must be more than 0s"),
        ("[proxy]\nproxy_protocol_inbound = true", "proxy.proxy_protocol_trusted: required with proxy_protocol_inbound"),
        ("[proxy]\nproxy_protocol_trusted = [\"10.0.0.0/8\"]", "proxy.proxy_protocol_trusted: set, but proxy_protocol_inbound is false"),
        ("[proxy]\nproxy_protocol_inbound = true\nproxy_protocol_trusted = [\"10.0.0.1/8\"]", "proxy.proxy_protocol_trusted: \"10.0.0.1/8\" has host bits set: did you mean \"10.0.0.0/8\"?"),
        ("[proxy.limits]\nunlimited_sources = [\"lb\"]", "proxy.limits.unlimited_sources: \"lb\" is not an address or range"),
        ("[proxy.limits]\nmax_connections_per_source = 0", "proxy.limits.max_connections_per_source: must be at least 1"),
        ("[proxy.limits]\napp_share_per_source = 1.5", "proxy.limits.app_share_per_source: 1.5 is not in (0, 1]"),
        ("[[apps]]\nid = \"a\"\nreachable_by = []", "apps[0].reachable_by: empty"),
        ("[[apps]]\nid = \"a\"\nreachable_by = [\"tunnel\"]", "apps[0].reachable_by[0]: unknown variant `tunnel`"),
        ("[proxy.timeouts]\nidle = \"soon\"", "proxy.timeouts.idle: "),
        ("[proxy.custom_domains]\ntxt_prefix = \"app\"", "proxy.custom_domains.txt_prefix: \"app\" must be one DNS label"),
        ("[proxy.custom_domains]\nmin_ttl = \"2h\"", "proxy.custom_domains.min_ttl: 2h is more than max_ttl 1h"),
        ("[proxy.http]\nmax_headers = 300", "proxy.http.max_headers: 300 is not in 1..=256"),
        ("[proxy.http]\nforwarded = \"keep\"", "proxy.http.forwarded: unknown variant `keep`"),
        ("[proxy.http]\nredirect_listen = \"80\"", "proxy.http.redirect_listen: \"80\" is not a socket address"),
        ("[proxy.http]\nheader_read_timeout = \"0s\"", "proxy.http.header_read_timeout: must be more than 0s"),
        ("[[apps]]\nid = \"a\"\n[apps.health_check]\npath = \"healthz\"", "apps[0].health_check.path: \"healthz\" must start with '/'"),
        ("[[apps]]\nid = \"a\"\n[apps.health_check]\npath = \"/h\"\ninterval = \"1s\"\ntimeout = \"2s\"", "apps[0].health_check.timeout: 2s is longer than interval 1s"),
        ("[[apps]]\nid = \"a\"\n[apps.health_check]\npath = \"/h\"\nfall = 0", "apps[0].health_check.fall: must be at least 1"),
        ("[tee]\nprovider = \"x\"", "tee.provider: unknown variant `x`"),
        (
            "[tee]\nprovider = \"none\"\nsealing = \"tee\"",
            "tee.sealing: provider = \"none\" has no TEE to seal with",
        ),
        ("[tee.simulator]\nmrtd = \"abcd\"", "tee.simulator.mrtd: must be 48 bytes as 96 hex digits"),
        ("[tee]\nquote = \"x\"", "tee.quote: unknown field `quote`"),
        ("[tea]\nprovider = \"x\"", "tea: unknown section"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"", "vpc: missing field `register_listen`"),
        ("[vpc]\nprefix = \"10.88.0.1/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"", "vpc.prefix: 10.88.0.1/16 has host bits set"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.89.0.1\"\nregister_listen = \"127.0.0.1:8444\"", "vpc.gateway_address: 10.89.0.1 is not a host address in 10.88.0.0/16"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"\ninterface = \"a-very-long-interface\"", "vpc.interface: \"a-very-long-interface\" must be 1-15"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"\nhandshake_stale = \"2h\"", "vpc.lease_reclaim: 1h is less than handshake_stale 2h"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"\nkind = \"tun\"", "vpc.kind: unknown variant `tun`"),
        ("[[apps]]\nid = \"web\"\nmode = \"http\"\nproxy_protocol = \"v2\"", "apps[0].proxy_protocol: not sent in mode \"http\""),
        ("[tee]\nprovider = \"none\"\n[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"", "vpc: needs attestation"),
        ("[vpc]\nprefix = \"10.88.0.0/16\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:8444\"\n[vpc.apps.shop]\npolicy = \"p.toml\"", "vpc.apps.shop: no [[apps]] entry has id \"shop\""),
        ("[tee]\npccs_url = \"http://pccs.example\"", "tee.pccs_url: \"http://pccs.example\" must be an https:// URL"),
        ("[acme]\ndirectory = \"x\"", "acme.directory: \"x\" must be an https:// URL"),
        ("[[apps]]\nid = \"Demo\"", "apps[0].id: \"Demo\" contains 'D'"),
        ("[[apps]]\nid = \"app-1\"", "apps[0].id: \"app-1\" ends in '-1', which names would read as a port"),
        ("[[apps]]\nid = \"app-22s\"", "apps[0].id: \"app-22s\" ends in '-22s'"),
        ("[[apps]]\nid = \"-a\"", "apps[0].id: \"-a\": '-' must separate"),
        ("[[apps]]\nid = \"a\"\n[[apps]]\nid = \"a\"", "apps[1].id: \"a\" is already apps[0].id"),
        ("[[apps]]\nid = \"demo\"\n[[apps]]\nid = \"demos\"", "apps[1].id: \"demos\" is ambiguous: it also reads as app \"demo\" (apps[0]) with the 's' flag"),
        ("[[apps]]\nid = \"a\"\nmode = \"udp\"", "apps[0].mode: unknown variant `udp`"),
        ("[[apps]]\nid = \"a\"\ndefault_port = 0", "apps[0].default_port: must be 1-65535"),
        ("[[apps]]\nid = \"a\"\ndefault_port = 70000", "apps[0].default_port: "),
        ("[[apps]]\nid = \"a\"\nports = [22]", "apps[0].default_port: 80 is not in apps[0].ports"),
        ("[[apps]]\nid = \"a\"\nproxy_protocol = \"v3\"", "apps[0].proxy_protocol: unknown variant `v3`"),
        (
            "[[apps]]\nid = \"a\"\n[[apps.instances]]\naddress = \"10.0.0.1:80\"",
            "apps[0].instances[0].address: \"10.0.0.1:80\" is not an IP address (the port comes from the name",
        ),
        (
            "[[apps]]\nid = \"a\"\n[[apps.instances]]\naddress = \"10.0.0.1\"\n[[apps.instances]]\naddress = \"10.0.0.1\"",
            "apps[0].instances[1].address: 10.0.0.1 is listed twice",
        ),
        ("[tls]\ncertificates = [{ cert = \"c.pem\", key = \"k.pem\" }]", "tls.certificates[0].cert: /nonexistent/c.pem is not a readable file"),
        ("[admin]\nlisten = \"0.0.0.0:8001\"\ninsecure_no_auth = true", "admin.insecure_no_auth: only allowed on a loopback listener"),
        ("[admin]\nlisten = \"127.0.0.1:8001\"", "admin.token_file: required"),
        ("apps = 3", "apps: must be an array of tables"),
    ];
    for (text, expected) in cases {
        let got = problems(text);
        assert!(
            got.iter().any(|p| p.starts_with(expected)),
            "input:\n{text}\nexpected a problem starting with: {expected}\ngot: {got:#?}"
        );
    }
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let got = problems(
        r#"
[proxy]
listen = ["127.0.0.1:1", "127.0.0.1:1"]
[proxy.timeouts]
connect = "0s"
[[apps]]
id = "ok"
[[apps.instances]]
address = "10.0.0.1"
[[apps]]
id = "bad_id"
[[apps]]
id = "x"
[[apps.instances]]
address = "10.0.0.1:80"
[admin]
listen = "0.0.0.0:1"
"#,
    );
    // the bad instance stops app[2]'s decoding, so semantic checks wait for a clean decode;
    // but every decode problem of every section is listed together.
    assert!(
        got.iter()
            .any(|p| p.starts_with("apps[2].instances[0].address")),
        "{got:#?}"
    );
    let got = problems(
        r#"
[proxy]
listen = ["127.0.0.1:1", "127.0.0.1:1"]
[proxy.timeouts]
connect = "0s"
[[apps]]
id = "bad_id"
[[apps]]
id = "y"
default_port = 0
[admin]
listen = "0.0.0.0:1"
"#,
    );
    for expected in [
        "proxy.listen[1]",
        "proxy.timeouts.connect",
        "apps[0].id",
        "apps[1].default_port",
        "admin.token_file",
    ] {
        assert!(
            got.iter().any(|p| p.starts_with(expected)),
            "missing {expected} in {got:#?}"
        );
    }
}

#[test]
fn syntax_errors_say_where() {
    let err = parse("[proxy\nlisten = 1").unwrap_err();
    assert!(
        err.to_string().starts_with("not valid TOML at bytes"),
        "{err}"
    );
}

#[test]
fn app_id_grammar() {
    for ok in ["a", "demo", "my-app", "app-1x", "a1-b2", "x-s", "x-1a"] {
        assert_eq!(app_id_problem(ok), None, "{ok}");
    }
    for bad in [
        "",
        "A",
        "a_b",
        "a-",
        "a--b",
        "app-1",
        "app-1g",
        "app-80s",
        &"a".repeat(64),
    ] {
        assert!(app_id_problem(bad).is_some(), "{bad}");
    }
}

#[test]
fn acme_dns_and_store_sections_parse_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tsig.key"), "c2VjcmV0").unwrap();
    let c = Config::from_toml(
        r#"
[proxy]
base_domains = ["gw.test"]
[acme]
directory = "https://127.0.0.1:14000/dir"
domains = ["shop.example.org"]
[dns]
provider = "rfc2136"
resolvers = ["127.0.0.1:5353"]
[dns.rfc2136]
server = "127.0.0.1:5353"
zones = ["gw.test"]
key_name = "gatehouse"
key_file = "tsig.key"
[store]
path = "state"
"#,
        dir.path(),
    )
    .unwrap();
    let acme = c.acme.unwrap();
    assert_eq!(acme.key_type, KeyType::EcdsaP256);
    assert!(acme.base_domains && acme.caa_check && !acme.set_caa);
    assert_eq!(acme.caa_issuer, "letsencrypt.org");
    let dns = c.dns.unwrap();
    assert_eq!(dns.propagation_timeout, Duration::from_secs(120));
    let r = dns.rfc2136.unwrap();
    assert_eq!(r.key_algorithm, "hmac-sha256");
    assert_eq!(r.key_file, dir.path().join("tsig.key"));
    assert_eq!(c.store.path, Some(dir.path().join("state")));
}

#[test]
fn acme_problems_name_their_keys() {
    let p = problems(
        r#"
[proxy]
base_domains = ["gw.test"]
[acme]
directory = "http://insecure.test/dir"
eab_kid = "kid-1"
domains = ["*.wild.test", "no_underscore.test"]
set_caa = true
[store]
backend = "etcd"
"#,
    );
    let joined = p.join("\n");
    for needle in [
        "acme.directory: \"http://insecure.test/dir\" must be an https:// URL",
        "acme.eab_kid: eab_kid and eab_hmac_key_file go together",
        "acme.base_domains: wildcard certificates need DNS-01",
        "acme.set_caa: needs a [dns] provider",
        "acme.domains[0]",
        "acme.domains[1]: \"no_underscore.test\" is not a DNS name",
        "store.etcd: required when backend = \"etcd\"",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    let p = problems("[dns]\nprovider = \"rfc2136\"\n").join("\n");
    assert!(p.contains("dns.rfc2136: required"), "{p}");
    let p = problems("[dns]\nprovider = \"route53\"\n").join("\n");
    assert!(p.contains("dns.provider"), "{p}");
}

/// Issue 16 §10: instances on the gateway host itself need a flag named for it; the
/// unspecified address never passes.
#[test]
fn hardening_local_instance_addresses_need_the_flag() {
    let app = |addr: &str| {
        format!(
            "[[apps]]\nid = \"web\"\ndefault_port = 80\n[[apps.instances]]\naddress = \"{addr}\"\n"
        )
    };
    for addr in ["127.0.0.1", "169.254.1.1", "::1", "fe80::1", "0.0.0.0"] {
        let p = problems(&app(addr));
        assert!(
            p.iter().any(|p| p.contains("apps[0].instances[0].address")
                && p.contains("allow_local_instances")),
            "{addr}: {p:?}"
        );
    }
    let allowed = |addr: &str| format!("[proxy]\nallow_local_instances = true\n{}", app(addr));
    assert!(parse(&allowed("127.0.0.1")).is_ok());
    assert!(parse(&allowed("fe80::1")).is_ok());
    assert!(
        parse(&allowed("0.0.0.0")).is_err(),
        "unspecified is never an instance"
    );
    assert!(parse(&app("10.88.0.2")).is_ok());
}

/// Issue 19: `[store.etcd]` names each bad key; plain http only to loopback.
#[test]
fn etcd_store_settings_name_each_bad_key() {
    let p = problems(
        r#"
[proxy]
base_domains = ["gw.test"]
[store]
backend = "etcd"
[store.etcd]
endpoints = ["http://10.0.0.5:2379", "https://10.0.0.6:2379", "etcd:2379", "http://127.0.0.1:x"]
prefix = "/gatehouse"
cert_file = "node.pem"
timeout = "0s"
"#,
    );
    let joined = p.join("\n");
    for needle in [
        "store.etcd.endpoints[0]: \"http://10.0.0.5:2379\" is plain http to another host",
        "store.etcd.endpoints[1]: \"https://10.0.0.6:2379\" needs store.etcd.ca_file",
        "store.etcd.endpoints[2]: \"etcd:2379\" is not a URL",
        "store.etcd.endpoints[3]: \"http://127.0.0.1:x\" needs host:port",
        "store.etcd.prefix: \"/gatehouse\" must end with '/'",
        "store.etcd.cert_file: cert_file and key_file go together",
        "store.etcd.timeout: must be more than 0",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    let p = problems(
        r#"
[proxy]
base_domains = ["gw.test"]
[store.etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
    );
    assert!(
        p.join("\n")
            .contains("store.etcd: set backend = \"etcd\" to use it"),
        "{p:?}"
    );
    let c = Config::from_toml(
        r#"
[proxy]
base_domains = ["gw.test"]
[store]
backend = "etcd"
[store.etcd]
endpoints = ["http://127.0.0.1:2379", "https://[::1]:2379"]
ca_file = "etcd-ca.pem"
"#,
        Path::new("/etc/gatehouse"),
    )
    .unwrap();
    let e = c.store.etcd.unwrap();
    assert_eq!(e.prefix, "gatehouse/");
    assert_eq!(e.ca_file.unwrap(), Path::new("/etc/gatehouse/etcd-ca.pem"));
}

/// The README's `[store.etcd]` example is a valid config as shown.
#[test]
fn etcd_store_example_in_the_readme_parses() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("backend = \"etcd\""))
        .expect("the README shows an etcd store");
    let c = Config::from_toml(block, Path::new("/etc/gatehouse")).unwrap_or_else(|e| {
        panic!("{}", e.problems().join("\n"));
    });
    assert_eq!(c.store.backend, StoreBackend::Etcd);
    assert_eq!(c.store.etcd.unwrap().endpoints.len(), 3);
}

/// An app given through the admin API is checked with the file's messages, under `app`.
#[test]
fn admin_api_app_checks_name_keys_under_app() {
    let file: AppConfig = toml::from_str("id = \"web\"").unwrap();
    let others = vec![("config apps[0]".to_owned(), file)];
    let check = |text: &str| check_app(toml::from_str(text).unwrap(), &others, false);
    let p = check("id = \"web\"").unwrap_err();
    assert_eq!(
        p[0].to_string(),
        "app.id: \"web\" is already config apps[0].id"
    );
    let p = check("id = \"webs\"").unwrap_err();
    assert!(p[0].to_string().contains("ambiguous"), "{p:?}");
    let p = check("id = \"we\"\ndefault_port = 0\ninstances = [{ address = \"127.0.0.1\" }]")
        .unwrap_err();
    let p: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert!(
        p.iter()
            .any(|p| p.starts_with("app.default_port: must be 1-65535")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.starts_with("app.instances[0].address: 127.0.0.1 is on the gateway host")),
        "{p:?}"
    );
    let p = check("id = \"x\"\nport = 1").unwrap_err();
    assert!(
        p[0].to_string().starts_with("app.port: unknown field"),
        "{p:?}"
    );
    assert!(check("id = \"api\"\ninstances = [{ address = \"10.0.0.2\" }]").is_ok());
}

/// The apps `check_app` needs beside a new one are those of `related_ids`: every app among
/// many that it refuses a new id for has one of them.
#[test]
fn admin_api_app_related_ids_are_all_the_check_needs() {
    let mut related = related_ids("web");
    related.sort();
    assert_eq!(related, ["web", "webg", "webs"]);
    let mut related = related_ids("webs");
    related.sort();
    assert_eq!(related, ["web", "webs", "websg", "webss"]);
    let ids = [
        "web", "webs", "webg", "we", "wbs", "websg", "webss", "web2", "webgs",
    ];
    let app = |id: &str| {
        toml::from_str(&format!(
            "id = {id:?}\ninstances = [{{ address = \"10.0.0.2\" }}]"
        ))
        .unwrap()
    };
    for new in ids {
        for other in ids.iter().filter(|o| **o != new) {
            let others = vec![(
                "api app".to_owned(),
                toml::from_str::<AppConfig>(&format!("id = {other:?}")).unwrap(),
            )];
            let refused = check_app(app(new), &others, false).is_err();
            assert_eq!(
                refused,
                related_ids(new).iter().any(|r| r == other),
                "{new} beside {other}"
            );
        }
        let same = vec![(
            "api app".to_owned(),
            toml::from_str::<AppConfig>(&format!("id = {new:?}")).unwrap(),
        )];
        assert!(check_app(app(new), &same, false).is_err());
    }
}

#[test]
fn admin_api_tokens_and_admission_are_checked() {
    let p = problems(
        "[admin]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"t\"\ntokens = [{ id = \"default\", file = \"t\", scope = \"read\" }, { id = \"a b\", file = \"missing\", scope = \"write\" }]\n[admission]\nwebhook = \"https://x\"\nallow_list = \"t\"\n",
    );
    let p = p.join("\n");
    for want in [
        "admin.tokens[0].id: \"default\" is already taken",
        "admin.tokens[1].id: \"a b\" is not 1-64 letters",
        "admin.tokens[1].file:",
        "admission.allow_list: contradicts admission.webhook",
        "admission.webhook: \"https://x\" is not an http:// URL",
    ] {
        assert!(p.contains(want), "{want} in:\n{p}");
    }
    let p = problems("[admission]\n").join("\n");
    assert!(p.contains("admission: set webhook or allow_list"), "{p}");
}

/// Every `toml` block of the README is a valid config as shown (fragments under a minimal
/// `[proxy]` and `[tee]`), but for the files it names, which a reader makes first. The policy
/// example (not a config) is checked by the attest crate.
#[test]
fn readme_toml_examples_are_valid_configs() {
    let readme = include_str!("../../README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| !b.trim_start().starts_with("tcb_statuses"))
        .collect();
    assert!(blocks.len() >= 10, "{}", blocks.len());
    for block in blocks {
        let mut doc = String::new();
        if !block.contains("[proxy]") {
            doc.push_str(
                "[proxy]\nlisten = [\"127.0.0.1:443\"]\nbase_domains = [\"gw.example.com\"]\n",
            );
        }
        if !block.contains("[tee]") {
            doc.push_str("[tee]\nprovider = \"simulator\"\n");
        }
        if block.contains("on_demand") && !block.contains("[acme]") {
            doc.push_str("[acme]\ndirectory = \"https://ca.example/dir\"\nbase_domains = false\n");
        }
        if block.contains("on_demand") {
            doc.push_str("[admin]\nlisten = \"127.0.0.1:8001\"\ninsecure_no_auth = true\n[admission]\nallow_list = \"apps.allowed\"\n");
        }
        doc.push_str(block);
        if let Err(e) = Config::from_toml(&doc, Path::new("/nonexistent")) {
            let real: Vec<String> = e
                .problems()
                .into_iter()
                .filter(|p| !p.contains("is not a readable file"))
                .collect();
            assert!(
                real.is_empty(),
                "README block:\n{block}\nproblems: {real:#?}"
            );
        }
    }
}

#[test]
fn ct_monitor_section_parses_and_refuses_what_would_lie() {
    let c = parse("[ct]\nwebhook = \"https://alerts.example.com/x\"\n").unwrap();
    let ct = c.ct.expect("[ct]");
    assert_eq!(ct.sources.len(), 2);
    assert_eq!(ct.interval, std::time::Duration::from_secs(600));
    assert!(parse("").unwrap().ct.is_none(), "absent: nothing watched");
    let p = problems(
        "[ct]\nsources = []\ninterval = \"1h\"\nstale_after = \"10m\"\n\
         webhook = \"http://alerts.example.com/x\"\ndomains = [\"bad..name\"]\n",
    );
    let all = p.join("\n");
    for key in [
        "ct.sources",
        "ct.stale_after",
        "ct.webhook",
        "ct.domains[0]",
    ] {
        assert!(all.contains(key), "{key} missing in:\n{all}");
    }
    assert!(problems("[[apps]]\nid = \"attest\"\ndefault_port = 80\n")
        .join("\n")
        .contains("\"attest\" is reserved"));
}

#[test]
fn encrypted_channel_settings_parse_and_bad_ones_are_named() {
    let c = parse(
        "[proxy.http.channel]\nrotate = \"2d\"\ngrace = \"1h\"\n\
         [[apps]]\nid = \"a\"\nmode = \"http\"\nencrypted_channel = true",
    )
    .unwrap();
    assert!(c.apps[0].encrypted_channel);
    assert_eq!(c.proxy.http.channel.rotate, Duration::from_secs(2 * 86400));
    assert_eq!(c.proxy.http.channel.replay_window, Duration::from_secs(120));
    let p = problems(
        "[proxy.http.channel]\nrotate = \"1h\"\ngrace = \"2h\"\nmax_response = 0\n\
         [[apps]]\nid = \"a\"\nencrypted_channel = true",
    );
    for key in [
        "apps[0].encrypted_channel",
        "proxy.http.channel.grace",
        "proxy.http.channel.max_response",
    ] {
        assert!(p.iter().any(|l| l.starts_with(key)), "{key} in {p:#?}");
    }
}

#[test]
fn splice_is_on_by_default_and_can_be_turned_off() {
    assert!(parse("").unwrap().proxy.splice);
    assert!(!parse("[proxy]\nsplice = false\n").unwrap().proxy.splice);
    let e = parse("[proxy]\nsplice = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("splice"), "{e}");
}
