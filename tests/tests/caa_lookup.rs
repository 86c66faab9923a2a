//! CAA checks against a real authoritative server (Knot): the relevant record set is found by
//! climbing from the served name, follows CNAMEs, lets a more specific name override its
//! parent, and fails closed when the server fails.

use gatehouse_caa::lookup::Checker;
use gatehouse_caa::{Policy, Verdict};
use gatehouse_tests::knot::Knot;
use std::time::Duration;

const OURS: &str = "https://acme.test/acct/1";

fn policy() -> Policy {
    Policy {
        issuers: vec!["letsencrypt.org".into()],
        accounts: vec![OURS.into()],
        methods: vec!["dns-01".into()],
    }
}

fn kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Locked => "locked",
        Verdict::Unlocked { .. } => "unlocked",
        Verdict::Blocked { .. } => "blocked",
        Verdict::Unknown { .. } => "unknown",
    }
}

#[tokio::test]
async fn verdicts_from_a_real_zone() {
    let ours =
        format!("CAA 0 issue \"letsencrypt.org; accounturi={OURS}; validationmethods=dns-01\"");
    let ours_wild = ours.replace(" issue ", " issuewild ");
    let knot = Knot::start_with(
        "gw.test",
        &[
            &format!("@ 60 {ours}"),
            &format!("@ 60 {ours_wild}"),
            "other 60 CAA 0 issue \"letsencrypt.org; accounturi=https://acme.test/acct/999\"",
            "closed 60 CAA 0 issue \";\"",
            "anyone 60 CAA 0 issue \"letsencrypt.org\"",
            "alias 60 CNAME foreign.gw.test.",
            "foreign 60 CAA 0 issue \"ca.example.net\"",
            "deep.sub 60 A 127.0.0.1",
        ],
        &["broken.test"],
    );
    let checker = Checker::new(&[knot.addr], Duration::from_secs(2)).unwrap();
    let p = policy();
    for (name, expected) in [
        ("gw.test", "locked"),
        ("web.gw.test", "locked"), // no record of its own: the apex governs
        ("*.gw.test", "locked"),   // issuewild at the apex
        ("deep.sub.gw.test", "locked"), // climbs two labels
        ("other.gw.test", "unlocked"), // more specific name overrides: another account
        ("anyone.gw.test", "unlocked"), // no accounturi
        ("closed.gw.test", "blocked"), // only ";"
        ("alias.gw.test", "unlocked"), // CNAME to a name with a foreign CAA
        ("x.broken.test", "unknown"), // SERVFAIL: fail closed
    ] {
        let v = checker.check(name, &p).await;
        assert_eq!(kind(&v), expected, "{name}: {v:?}");
    }
    let set = checker.relevant_set("alias.gw.test").await.unwrap();
    assert_eq!(set.aliases.len(), 1, "the CNAME is reported: {set:?}");
    assert_eq!(
        checker
            .relevant_set("web.gw.test")
            .await
            .unwrap()
            .found_at
            .as_deref(),
        Some("gw.test")
    );
}

#[tokio::test]
async fn no_record_anywhere_is_unlocked_and_a_dead_server_is_unknown() {
    // The server must answer for every ancestor the climb reaches (here the zone is `test`);
    // an authoritative server REFUSES names above its zones, which rightly reads as unknown.
    let knot = Knot::start("test", &["www.open 60 A 127.0.0.1"]);
    let checker = Checker::new(&[knot.addr], Duration::from_secs(2)).unwrap();
    let v = checker.check("www.open.test", &policy()).await;
    assert_eq!(kind(&v), "unlocked", "{v:?}");
    let v = checker.check("www.elsewhere.example", &policy()).await;
    assert_eq!(
        kind(&v),
        "unknown",
        "REFUSED for a zone the server does not hold: {v:?}"
    );
    let dead = Checker::new(
        &["127.0.0.1:9".parse().unwrap()],
        Duration::from_millis(300),
    )
    .unwrap();
    let v = dead.check("www.open.test", &policy()).await;
    assert_eq!(kind(&v), "unknown", "{v:?}");
}

/// `gatehouse caa check` prints one verdict per domain and exits 0 only when all are locked.
#[test]
fn caa_check_command() {
    let ours =
        format!("CAA 0 issue \"letsencrypt.org; accounturi={OURS}; validationmethods=dns-01\"");
    let knot = Knot::start(
        "gw.test",
        &[
            &format!("@ 60 {ours}"),
            "open 60 CAA 0 issue \"letsencrypt.org\"",
        ],
    );
    let run = |domains: &[&str]| {
        std::process::Command::new(gatehouse_tests::binary())
            .args([
                "caa",
                "check",
                "--account",
                OURS,
                "--method",
                "dns-01",
                "--server",
                &knot.addr.to_string(),
            ])
            .args(domains)
            .output()
            .unwrap()
    };
    let out = run(&["gw.test", "web.gw.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("web.gw.test: locked"), "{text}");
    let out = run(&["gw.test", "open.gw.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("open.gw.test: UNLOCKED: ") && text.contains("no accounturi"),
        "{text}"
    );
}

/// Issue 18 §1 through the binary and Knot, the two records reported as read too generously:
/// another spelling of `accounturi`, and a record repeating it with another account beside
/// ours. Boulder lets other accounts issue under both; `caa check` says UNLOCKED, exit 1.
#[test]
fn caa_conformance_check_reads_records_as_boulder_does() {
    let knot = Knot::start(
        "gw.test",
        &[
            &format!("spelled 60 CAA 0 issue \"letsencrypt.org; AccountURI={OURS}\""),
            &format!("repeated 60 CAA 0 issue \"letsencrypt.org; accounturi={OURS}\""),
            &format!(
                "repeated 60 CAA 0 issue \"letsencrypt.org; accounturi={OURS}; accounturi=https://acme.test/acct/999\""
            ),
            "flagged 60 CAA 1 tbs \"x\"",
            &format!("flagged 60 CAA 0 issue \"letsencrypt.org; accounturi={OURS}\""),
        ],
    );
    let out = std::process::Command::new(gatehouse_tests::binary())
        .args([
            "caa",
            "check",
            "--account",
            OURS,
            "--server",
            &knot.addr.to_string(),
        ])
        .args(["spelled.gw.test", "repeated.gw.test", "flagged.gw.test"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("spelled.gw.test: UNLOCKED: ") && text.contains("AccountURI"),
        "{text}"
    );
    assert!(
        text.contains("repeated.gw.test: UNLOCKED: ") && text.contains("repeats accounturi"),
        "{text}"
    );
    assert!(
        text.contains("flagged.gw.test: BLOCKED: ") && text.contains("critical"),
        "{text}"
    );
}
