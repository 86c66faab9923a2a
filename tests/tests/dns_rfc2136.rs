//! The RFC 2136 provider against a real Knot that accepts only TSIG-signed updates: every
//! write is read back from the server.

use gatehouse_caa::plan::Step;
use gatehouse_caa::{plan, CaaRecord, Policy};
use gatehouse_dns::propagation::{wait_for_txt, Poll};
use gatehouse_dns::{DnsError, DnsProvider, Rfc2136};
use gatehouse_tests::knot::{Knot, TsigSecret};
use std::time::Duration;

fn provider(knot: &Knot, key: &TsigSecret) -> Rfc2136 {
    gatehouse_tests::knot::rfc2136(knot, &["gw.test"], key)
}

fn poll(knot: &Knot) -> Poll {
    Poll {
        servers: vec![knot.addr],
        timeout: Duration::from_secs(5),
        interval: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn txt_records_are_added_beside_each_other_and_removed_one_by_one() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("gw.test", &[], &key);
    let dns = provider(&knot, &key);
    let name = "_acme-challenge.gw.test";
    dns.add_txt(name, "apex-token").await.unwrap();
    dns.add_txt(name, "wildcard-token").await.unwrap();
    dns.add_txt(name, "wildcard-token").await.unwrap(); // idempotent
    wait_for_txt(&poll(&knot), name, "apex-token")
        .await
        .unwrap();
    wait_for_txt(&poll(&knot), name, "wildcard-token")
        .await
        .unwrap();

    dns.remove_txt(name, "apex-token").await.unwrap();
    let short = Poll {
        timeout: Duration::from_millis(300),
        ..poll(&knot)
    };
    let gone = wait_for_txt(&short, name, "apex-token").await.unwrap_err();
    assert!(matches!(gone, DnsError::NotPropagated { .. }), "{gone}");
    assert!(gone.to_string().contains(&knot.addr.to_string()), "{gone}");
    wait_for_txt(&poll(&knot), name, "wildcard-token")
        .await
        .unwrap();
}

#[tokio::test]
async fn caa_is_replaced_atomically_and_read_back() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable(
        "gw.test",
        &[
            "@ 60 CAA 0 issue \"someca.example\"",
            "@ 60 CAA 0 iodef \"mailto:sec@gw.test\"",
        ],
        &key,
    );
    let dns = provider(&knot, &key);
    let before = dns.list_caa("gw.test").await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");

    let policy = Policy {
        issuers: vec!["letsencrypt.org".into()],
        accounts: vec!["https://acme.test/acct/1".into()],
        methods: vec!["dns-01".into()],
    };
    let wanted = plan::wanted(&policy);
    let steps = dns.set_caa("gw.test", &wanted).await.unwrap();
    assert!(steps.contains(&Step::Remove(CaaRecord::new(0, "issue", "someca.example"))));

    let mut after = dns.list_caa("gw.test").await.unwrap();
    after.sort_by(|a, b| (&a.tag, &a.value).cmp(&(&b.tag, &b.value)));
    let mut expect = wanted.clone();
    expect.push(CaaRecord::new(0, "iodef", "mailto:sec@gw.test"));
    expect.sort_by(|a, b| (&a.tag, &a.value).cmp(&(&b.tag, &b.value)));
    assert_eq!(
        after, expect,
        "the iodef stays, the foreign issuer goes, guards are gone"
    );

    // the lock as a CA sees it, through the real lookup
    let checker =
        gatehouse_caa::lookup::Checker::new(&[knot.addr], Duration::from_secs(2)).unwrap();
    let verdict = checker.check("app.gw.test", &policy).await;
    assert!(
        matches!(verdict, gatehouse_caa::Verdict::Locked),
        "{verdict:?}"
    );

    assert!(
        dns.set_caa("gw.test", &wanted).await.unwrap().is_empty(),
        "second run changes nothing"
    );
}

#[tokio::test]
async fn an_unknown_tsig_key_is_one_clear_error_naming_the_key() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("gw.test", &[], &key);
    let stranger = TsigSecret::random("not-configured");
    let err = provider(&knot, &stranger)
        .add_txt("_acme-challenge.gw.test", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::TsigRefused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"not-configured\"") && msg.contains("BADKEY"),
        "{msg}"
    );

    // the right name with the wrong secret: BADSIG
    let forged = TsigSecret {
        name: key.name.clone(),
        ..TsigSecret::random("x")
    };
    let err = provider(&knot, &forged)
        .add_txt("_acme-challenge.gw.test", "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BADSIG"), "{err}");

    // unsigned updates are refused by the ACL
    let unsigned = Rfc2136::new(
        knot.addr,
        vec!["gw.test".into()],
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let err = unsigned
        .add_txt("_acme-challenge.gw.test", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Rejected { .. }), "{err:?}");
    // Knot answers NOTAUTH to an update its ACL does not allow (BIND: REFUSED)
    assert!(
        err.to_string().contains("Not authorized") && err.to_string().contains("not authorised"),
        "{err}"
    );

    // nothing was written by any of them
    let short = Poll {
        timeout: Duration::from_millis(300),
        ..poll(&knot)
    };
    assert!(wait_for_txt(&short, "_acme-challenge.gw.test", "x")
        .await
        .is_err());
}

/// Issue 18 §5: the CAA records `set_caa` plans from are read through the TSIG-signed channel,
/// so what is read is what the zone holds: with a key the server does not know, the read is
/// refused like an update (an unsigned read would have answered and been believed).
#[tokio::test]
async fn cert_lifecycle_caa_is_read_through_the_signed_channel() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("gw.test", &["@ 60 CAA 0 issue \"ca.example.net\""], &key);
    let read = provider(&knot, &key).list_caa("gw.test").await.unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    let stranger = TsigSecret::random("not-configured");
    let err = provider(&knot, &stranger)
        .list_caa("gw.test")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::TsigRefused { .. }), "{err:?}");
}
