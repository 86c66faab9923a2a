//! What each fuzz target checks, beyond "does not panic". One source for two runners: the
//! libFuzzer targets in `fuzz_targets/` (`fuzz/run.sh`) and `cargo test fuzz_replay`
//! (`tests/tests/fuzz_replay.rs`), which replays the committed seeds and a few thousand
//! deterministic mutations of them on every CI run.
//!
//! Every function takes untrusted bytes, as the gateway receives them from outside.

use gatehouse::hello::{parse as hello_parse, record, MAX_HELLO_BYTES};
use gatehouse::route::custom_domain::parse_target;
use gatehouse::route::name::{parse_label, Mode, Readings};
use gatehouse::route::{AppSpec, RouteTable};
use gatehouse_attest::bundle::Bundle;
use gatehouse_attest::eventlog::{check_rtmr3, pinned_event, replay, Event};
use gatehouse_attest::policy::Policy;
use gatehouse_attest::statement::{verify_statement, Statement};
use gatehouse_caa::value::parse_issue_value;
use gatehouse_caa::{evaluate, CaaRecord, Verdict};
use std::sync::OnceLock;

/// A check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// The targets by name (the names of the `fuzz_targets/` binaries and of the seed folders).
#[allow(dead_code)] // each fuzz binary uses one entry
pub const TARGETS: &[(&str, Check)] = &[
    ("client_hello", client_hello),
    ("proxy_protocol", proxy_protocol),
    ("route_name", route_name),
    ("caa_value", caa_value),
    ("ratls_evidence", ratls_evidence),
    ("bundle_jcs", bundle_jcs),
    ("event_log", event_log),
    ("config_toml", config_toml),
    ("vpc_bodies", vpc_bodies),
    ("custom_domain_txt", custom_domain_txt),
    ("statement", statement),
    ("dns_reply", dns_reply),
];

/// Raw bytes as the start of a connection: a parsed SNI is lower-case ASCII of at most 253
/// bytes; a result never changes when more bytes follow a complete hello.
pub fn client_hello(data: &[u8]) {
    let data = &data[..data.len().min(MAX_HELLO_BYTES + 64)];
    if let Ok(Some(message)) = record::reassemble(data) {
        let parsed = hello_parse::parse(&message);
        if let Ok(hello) = &parsed {
            assert!(hello.sni.len() <= 253);
            assert!(hello
                .sni
                .bytes()
                .all(|b| !b.is_ascii_uppercase() && b.is_ascii()));
        }
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        let again = record::reassemble(&longer).map(|m| m.map(|m| hello_parse::parse(&m)));
        assert_eq!(again, Ok(Some(parsed)));
    }
}

/// A PROXY header: its length never exceeds the input; a complete header stays complete when
/// more bytes follow; no proper prefix of it is complete.
pub fn proxy_protocol(data: &[u8]) {
    use gatehouse::proxy_protocol::parse;
    if let Ok(Some((header, len))) = parse(data) {
        assert!(len <= data.len());
        let mut longer = data.to_vec();
        longer.push(0x16);
        assert_eq!(parse(&longer), Ok(Some((header, len))));
        for end in 0..len {
            assert!(
                !matches!(parse(&data[..end]), Ok(Some(_))),
                "prefix {end} complete"
            );
        }
    }
}

fn route_table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let spec = |id: &str| AppSpec::new(id, 80, vec![]);
        RouteTable::build(
            &["gw.test".into(), "a.gw.test".into()],
            vec![spec("web"), spec("my-app"), spec("demos")],
            None,
        )
        .expect("the fuzz route table")
    })
}

/// Any SNI against a small route table: a route's app is one the table holds; a port in the
/// name is never 0.
pub fn route_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = parse_label(name) {
        let readings = match r {
            Readings::One(a) => vec![a],
            Readings::Two(a, b) => vec![a, b],
        };
        for r in readings {
            assert!(r.port != Some(0));
            assert!(name.starts_with(r.app));
        }
    }
    if let Some(Ok(route)) = route_table().route_name(name) {
        assert!(route_table().app(&route.app.spec.id).is_some());
        assert!(route.port != 0);
    }
}

const OUR_CA: &str = "letsencrypt.org";
const OUR_ACCOUNT: &str = "https://acme-v02.api.letsencrypt.org/acme/acct/1";

/// A CAA record (first byte: flags; second: which tag; the rest: the value). A parsed issue
/// value renders back to itself; the verdict is "locked" only if the value names our CA and
/// exactly our account, as a CA would read it.
pub fn caa_value(data: &[u8]) {
    let value = data.get(2..).unwrap_or_default();
    if let Ok(v) = parse_issue_value(value) {
        let mut text = v.issuer.clone().unwrap_or_default();
        if !v.params.is_empty() || v.issuer.is_none() {
            text.push(';');
        }
        let params: Vec<String> = v.params.iter().map(|(t, x)| format!("{t}={x}")).collect();
        text.push_str(&params.join(";"));
        assert_eq!(
            parse_issue_value(text.as_bytes()),
            Ok(v.clone()),
            "{text:?}"
        );
        assert!(v.issuer.as_ref().is_none_or(|i| !i.is_empty()));
    }
    let (Some(&flags), Some(&which)) = (data.first(), data.get(1)) else {
        return;
    };
    let tag = ["issue", "issuewild", "iodef", "ISSUE", "unknown"][which as usize % 5];
    let record = CaaRecord {
        flags,
        tag: tag.to_owned(),
        value: value.to_vec(),
    };
    let policy = gatehouse_caa::Policy {
        issuers: vec![OUR_CA.into()],
        accounts: vec![OUR_ACCOUNT.into()],
        methods: vec!["dns-01".into()],
    };
    for name in ["shop.example", "*.shop.example"] {
        let verdict = evaluate(name, std::slice::from_ref(&record), &policy);
        if verdict == Verdict::Locked {
            assert!(
                tag.eq_ignore_ascii_case("issue") || tag == "issuewild",
                "{verdict:?}"
            );
            let v = parse_issue_value(value).expect("a locking value parses");
            assert!(v
                .issuer
                .as_deref()
                .is_some_and(|i| i.eq_ignore_ascii_case(OUR_CA)));
            assert_eq!(v.param("accounturi"), vec![OUR_ACCOUNT]);
        }
    }
}

/// A certificate as a verifier receives it: evidence found in it binds that certificate's key
/// (the claims were checked), so its report data is never all zero, and a second read agrees.
pub fn ratls_evidence(data: &[u8]) {
    if let Ok(e) = gatehouse_attest::ratls::evidence_of(data) {
        assert_ne!(e.expected_report_data, [0u8; 64]);
        let again = gatehouse_attest::ratls::evidence_of(data).expect("deterministic");
        assert_eq!(again.quote, e.quote);
        assert_eq!(again.expected_report_data, e.expected_report_data);
    }
}

/// JSON as a verifier receives a bundle: canonical form (JCS) is idempotent; a bundle that
/// reads has report data equal to the hash of its canonical claims.
pub fn bundle_jcs(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(c) = gatehouse_attest::jcs::canonical(&v) {
            let back: serde_json::Value =
                serde_json::from_slice(&c).expect("canonical form is JSON");
            assert_eq!(
                gatehouse_attest::jcs::canonical(&back).as_deref(),
                Some(&c[..])
            );
        }
    }
    if let Ok(b) = serde_json::from_slice::<Bundle>(data) {
        let _ = b.claims();
        if let Ok(rd) = b.expected_report_data() {
            assert_eq!(
                gatehouse_attest::bundle::report_data(&b.claims).ok(),
                Some(rd)
            );
        }
    }
}

/// An event log (JSON): a log that replays to a value checks against that value, and the
/// replay is deterministic; a pinned event is a runtime event of that name.
pub fn event_log(data: &[u8]) {
    let Ok(events) = serde_json::from_slice::<Vec<Event>>(data) else {
        return;
    };
    for imr in 0..4 {
        let _ = replay(&events, imr);
    }
    if let Ok(rtmr3) = replay(&events, 3) {
        assert!(check_rtmr3(&events, &rtmr3).is_ok());
    }
    for e in events.iter().take(4) {
        if let Ok(p) = pinned_event(&events, &e.event) {
            assert!(p.is_runtime() && p.event == e.event);
        }
    }
}

/// Text as a config file and as a measurement policy: either it loads or every refusal names
/// its reason (and, for the schema, a key path); a syntax error's span lies in the text.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Policy::parse(text);
    match gatehouse_config::Config::from_toml(text, std::path::Path::new("/nonexistent")) {
        Ok(_) => {}
        Err(gatehouse_config::ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(!p.reason.trim().is_empty(), "{p:?}");
            }
        }
        Err(gatehouse_config::ConfigError::Syntax { span, message }) => {
            assert!(!message.is_empty());
            if let Some(s) = span {
                assert!(s.start <= s.end && s.end <= text.len(), "{s:?}");
            }
        }
        Err(e) => panic!("from_toml read a file: {e}"),
    }
}

/// The bodies of the VPC's exchanges (registration request and answer, refusal, netmap): the
/// key and nonce decode as the registrar decodes them, and the quote inside verifies or is
/// refused, never panics.
pub fn vpc_bodies(data: &[u8]) {
    use gatehouse_vpc::register::{RegisterRequest, RegisterResponse};
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) {
        let key = gatehouse_vpc::wireguard::parse_key(&req.wg_public_key);
        let nonce = gatehouse_attest::hex::decode_array::<32>(&req.nonce);
        if let (Some(key), Some(nonce)) = (key, nonce) {
            let rd = gatehouse_vpc::register::report_data(&req.app_id, &key, &nonce);
            assert_ne!(rd, [0u8; 64]);
        }
        if let Some(collateral) = simulator_collateral() {
            let _ = gatehouse_attest::verify::verify_quote(&req.evidence, collateral, NOW, true);
        }
    }
    let _ = serde_json::from_slice::<RegisterResponse>(data);
    let _ = serde_json::from_slice::<gatehouse_vpc::register::Refusal>(data);
    let _ = serde_json::from_slice::<gatehouse_vpc::mesh::Netmap>(data);
}

/// A fixed "now" for the checks that verify quotes (inside the simulator's collateral window).
const NOW: u64 = 1_790_000_000;

fn simulator_collateral() -> Option<&'static gatehouse_attest::collateral::Collateral> {
    static C: OnceLock<Option<gatehouse_attest::collateral::Collateral>> = OnceLock::new();
    C.get_or_init(|| {
        gatehouse_attest::simulator::MockPki::from_seed(&gatehouse_attest::simulator::DEFAULT_SEED)
            .and_then(|p| p.collateral())
            .ok()
    })
    .as_ref()
}

/// A custom domain's TXT value: a target that parses renders back to itself.
pub fn custom_domain_txt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = parse_target(text) {
        assert!(!t.app.is_empty() && t.port != Some(0));
        let mut again = t.app.clone();
        if let Some(p) = t.port {
            again.push_str(&format!(":{p}"));
        }
        again.push_str(match t.mode {
            Mode::Terminate => "",
            Mode::Passthrough => ";mode=passthrough",
            Mode::TerminateH2 => ";mode=h2",
        });
        assert_eq!(parse_target(&again), Ok(t));
    }
}

/// A signed statement (JSON) as `gatehouse verify-statement` reads it: it verifies or names
/// why not, the same way each time, with or without a payload to compare.
pub fn statement(data: &[u8]) {
    let Ok(s) = serde_json::from_slice::<Statement>(data) else {
        return;
    };
    let policy = simulator_policy();
    let first = verify_statement(&s, None, policy, Some(NOW)).map(|q| q.tcb_status());
    let second = verify_statement(&s, None, policy, Some(NOW)).map(|q| q.tcb_status());
    assert_eq!(first.is_ok(), second.is_ok());
    let _ = verify_statement(&s, Some(b"hello"), policy, None);
}

fn simulator_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::parse("insecure_trust_simulator_root = true").expect("the fuzz policy")
    })
}

/// A DNS server's reply to an UPDATE (RFC 2136): it is taken only if it is a response with the
/// request's id and question; a TSIG error in it is named.
pub fn dns_reply(data: &[u8]) {
    let zone = hickory_proto::rr::Name::from_ascii("shop.example.").expect("a name");
    let request = gatehouse_dns::wire::update_request(&zone, 0x4a11);
    if let Ok(reply) = gatehouse_dns::wire::read_reply(&request, data) {
        assert_eq!(reply.metadata.id, 0x4a11);
        assert_eq!(reply.queries.len(), 1);
        if let Some(why) = gatehouse_dns::wire::tsig_refusal(&reply) {
            assert!(!why.is_empty());
        }
    }
}
