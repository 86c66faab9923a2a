//! The watch against sources that answer from memory, over the embedded store.

use crate::monitor::{Monitor, MonitorConfig};
use crate::{allowlist, certspotter, CtError, CtSource, Logged, Page};
use base64::Engine as _;
use gatehouse_store::{Embedded, Store};
use rcgen::PublicKeyData as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A certificate for `names` with a fresh key: DER and the key's SPKI hash.
fn cert(names: &[&str]) -> (Vec<u8>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let c = params.self_signed(&key).unwrap();
    let spki = crate::sha256_hex(&key.subject_public_key_info());
    (c.der().to_vec(), spki)
}

/// Cert Spotter's issuance object for `der`, as the API returns it with
/// `expand=dns_names&expand=cert_der` (plus fields we do not read).
fn issuance(id: u64, der: &[u8], spki: &str, names: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_string(),
        "tbs_sha256": crate::sha256_hex(b"tbs"),
        "cert_sha256": crate::sha256_hex(der),
        "dns_names": names,
        "pubkey_sha256": spki,
        "not_before": "2026-12-01T00:00:00Z",
        "not_after": "2027-03-01T00:00:00Z",
        "revoked": false,
        "cert_der": base64::engine::general_purpose::STANDARD.encode(der),
    })
}

#[test]
fn ct_monitor_reads_cert_spotter_issuances_and_checks_their_key() {
    let (der, spki) = cert(&["app.gw.test"]);
    let body = serde_json::json!([issuance(7, &der, &spki, &["app.gw.test"])]);
    let got = certspotter::parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "7");
    assert_eq!(got[0].spki_sha256, spki);
    assert_eq!(got[0].dns_names, ["app.gw.test"]);
    assert!(!got[0].serial.is_empty());
    // A pubkey_sha256 that is not the certificate's key is refused by name.
    let (_, other) = cert(&["x.gw.test"]);
    let lying = serde_json::json!([issuance(8, &der, &other, &["app.gw.test"])]);
    let e = certspotter::parse(lying.to_string().as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("is not the key of its cert_der"),
        "{e}"
    );
    let e = certspotter::parse(b"{\"code\":\"rate_limited\"}").unwrap_err();
    assert!(matches!(e, CtError::Malformed { .. }), "{e}");
}

/// Answers pages from a list; fails while `down`.
struct Memory {
    logged: Mutex<Vec<Logged>>,
    down: Mutex<bool>,
    asked: Mutex<Vec<Option<String>>>,
}

impl Memory {
    fn new(logged: Vec<Logged>, down: bool) -> Arc<Memory> {
        Arc::new(Memory {
            logged: Mutex::new(logged),
            down: Mutex::new(down),
            asked: Mutex::default(),
        })
    }
}

#[async_trait::async_trait]
impl CtSource for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn poll(&self, _domain: &str, cursor: Option<&str>) -> Result<Page, CtError> {
        self.asked.lock().unwrap().push(cursor.map(str::to_owned));
        if *self.down.lock().unwrap() {
            return Err(CtError::Source {
                source_name: "memory",
                detail: "connection refused".into(),
            });
        }
        let after: usize = cursor.map_or(0, |c| c.parse().unwrap());
        let all = self.logged.lock().unwrap();
        let entries: Vec<Logged> = all.iter().skip(after).take(2).cloned().collect();
        Ok(Page {
            cursor: Some((after + entries.len()).to_string()),
            more: !entries.is_empty(),
            entries,
        })
    }
}

fn logged(id: &str, names: &[&str]) -> (Logged, String) {
    let (der, spki) = cert(names);
    (crate::logged_from_der(id.into(), &der).unwrap(), spki)
}

#[tokio::test]
async fn ct_monitor_alerts_once_for_a_key_not_ours_keeps_its_cursor_and_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Embedded::open(&dir.path().join("s.redb")).unwrap());
    let (ours, our_spki) = logged("1", &["app.gw.test"]);
    let (rogue, _) = logged("2", &["app.gw.test"]);
    let (elsewhere, _) = logged("3", &["app.other.test"]);
    allowlist::record(store.as_ref(), &our_spki, allowlist::Why::Csr, 1)
        .await
        .unwrap();
    let source = Memory::new(vec![ours, rogue.clone(), elsewhere, rogue.clone()], false);
    let config = MonitorConfig {
        domains: vec!["*.gw.test".into()],
        interval: Duration::from_secs(60),
        stale_after: Duration::from_secs(3600),
        webhook: None,
    };
    let m = Monitor::new(vec![source.clone()], store.clone(), config.clone())
        .await
        .unwrap();
    assert_eq!(m.status().status, "stale", "before any answer");
    m.round().await;
    let s = m.status();
    assert_eq!(s.status, "alert");
    assert_eq!(
        s.alerts,
        std::slice::from_ref(&rogue.serial),
        "one alert, the rogue's serial"
    );
    assert_eq!(m.counters().0, 1);

    // A restart: the alert is loaded, the cursor continues where it stopped.
    drop(m);
    source.asked.lock().unwrap().clear();
    let m = Monitor::new(vec![source.clone()], store.clone(), config)
        .await
        .unwrap();
    assert_eq!(m.status().alerts, std::slice::from_ref(&rogue.serial));
    m.round().await;
    assert_eq!(source.asked.lock().unwrap()[0].as_deref(), Some("4"));
    assert_eq!(m.counters().0, 0, "nothing raised twice");

    // Down: the round fails and names the cause.
    *source.down.lock().unwrap() = true;
    m.round().await;
    let s = m.status();
    assert_eq!(s.errors["memory"], "memory: connection refused");
}

#[tokio::test]
async fn ct_monitor_is_stale_never_clean_while_a_source_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Embedded::open(&dir.path().join("s.redb")).unwrap());
    let source = Memory::new(Vec::new(), true);
    let config = MonitorConfig {
        domains: vec!["gw.test".into()],
        interval: Duration::from_secs(60),
        stale_after: Duration::from_secs(0),
        webhook: None,
    };
    let m = Monitor::new(vec![source.clone()], store, config)
        .await
        .unwrap();
    m.round().await;
    assert_eq!(m.status().status, "stale");
    *source.down.lock().unwrap() = false;
    m.round().await;
    assert!(m.status().checked_at.is_some());
    // stale_after = 0: clean only within the same second as the answer.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.status().status, "stale", "an old answer is stale");
}

#[tokio::test]
async fn ct_monitor_resolved_alerts_leave_the_status_for_every_node_and_are_not_raised_again() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Embedded::open(&dir.path().join("s.redb")).unwrap());
    let (rogue, _) = logged("2", &["app.gw.test"]);
    let source = |entries: Vec<Logged>| Memory::new(entries, false);
    let config = MonitorConfig {
        domains: vec!["gw.test".into()],
        interval: Duration::from_secs(60),
        stale_after: Duration::from_secs(3600),
        webhook: None,
    };
    let a = Monitor::new(
        vec![source(vec![rogue.clone()])],
        store.clone(),
        config.clone(),
    )
    .await
    .unwrap();
    a.round().await;
    assert_eq!(a.status().status, "alert");
    // A second node on the same store (a cluster) holds the alert too.
    let late = source(Vec::new());
    let b = Monitor::new(vec![late.clone()], store.clone(), config)
        .await
        .unwrap();
    b.round().await;
    assert_eq!(b.status().alerts, std::slice::from_ref(&rogue.serial));

    let unknown = a.resolve("00", "x", "ops").await.unwrap_err();
    assert_eq!(unknown.to_string(), "no CT alert with serial \"00\"");
    let r = a
        .resolve(&rogue.serial, "revoked at the CA", "ops")
        .await
        .unwrap();
    assert_eq!(
        (r.note.as_str(), r.by.as_str()),
        ("revoked at the CA", "ops")
    );
    assert_eq!(a.status().status, "clean");
    assert_eq!(a.resolved().await.unwrap(), vec![r]);
    // The other node sees it at its next round; a source that reports the certificate late
    // does not raise it again.
    late.logged.lock().unwrap().push(rogue.clone());
    b.round().await;
    assert_eq!(b.status().status, "clean", "{:?}", b.status());
    assert_eq!(b.counters().0, 0, "not raised again");
}
