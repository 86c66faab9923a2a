//! Stored records against someone who can write the store but holds no sealing key, over the
//! real embedded store; and the chain check against certificates a test CA makes.

use super::*;
use crate::keys::KeyType;
use gatehouse_store::{AesGcmSealer, Embedded};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca {
        issuer: Issuer::new(params, key),
        der,
    }
}

fn leaf(ca: &Ca, key: &CertKey, names: &[&str]) -> CertificateDer<'static> {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .signed_by(key.pair(), &ca.issuer)
        .unwrap()
        .der()
        .clone()
}

fn chain_pem(chain: &[CertificateDer<'static>]) -> String {
    chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
}

fn issued(names: &[&str], ca: &Ca) -> Issued {
    let key = CertKey::generate(KeyType::EcdsaP256).unwrap();
    let chain = vec![leaf(ca, &key, names), ca.der.clone()];
    Issued::from_pem(
        names.iter().map(|n| n.to_string()).collect(),
        &chain_pem(&chain),
        key,
    )
    .unwrap()
}

fn sealer() -> AesGcmSealer {
    AesGcmSealer::from_key(&[7u8; 32], "development").unwrap()
}

fn store() -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn cert_lifecycle_the_whole_record_is_sealed_and_bound_to_its_name() {
    let (_dir, store) = store();
    let sealer = sealer();
    let ca = ca("Test CA");
    let mut ours = issued(&["web.gw.test"], &ca);
    ours.save("web.gw.test", &store, &sealer, None)
        .await
        .unwrap();
    assert_eq!(ours.generation, 1);
    let back = Issued::load("web.gw.test", &store, &sealer, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.names, vec!["web.gw.test"]);
    assert_eq!(back.chain, ours.chain);
    assert_eq!(back.generation, 1);
    let raw = store.get("certs/web.gw.test").await.unwrap().unwrap().value;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("web.gw.test") && !text.contains("BEGIN CERTIFICATE"),
        "names and chain are inside the sealed data: {text}"
    );

    // The same record moved under another name does not open.
    store.put("certs/other.gw.test", &raw).await.unwrap();
    let err = Issued::load("other.gw.test", &store, &sealer, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot unseal"), "{err}");

    // A record the attacker sealed with a key of their own does not open either.
    let mut forged = issued(&["web.gw.test"], &self::ca("Attacker CA"));
    let attacker = AesGcmSealer::from_key(&[9u8; 32], "development").unwrap();
    let (_d2, scratch) = self::store();
    forged
        .save("web.gw.test", &scratch, &attacker, None)
        .await
        .unwrap();
    let forged_raw = scratch
        .get("certs/web.gw.test")
        .await
        .unwrap()
        .unwrap()
        .value;
    store.put("certs/web.gw.test", &forged_raw).await.unwrap();
    let err = Issued::load("web.gw.test", &store, &sealer, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot unseal"), "{err}");

    // The earlier format (chain and names in the clear, only the key sealed) is not trusted:
    // the attack in the issue paired our sealed key with a chain of their own.
    let legacy = serde_json::json!({
        "names": ["web.gw.test"],
        "chain_pem": chain_pem(&forged.chain),
        "key_sealed": "AAAA",
    });
    store
        .put("certs/web.gw.test", legacy.to_string().as_bytes())
        .await
        .unwrap();
    let err = Issued::load("web.gw.test", &store, &sealer, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("earlier version"), "{err}");
}

#[tokio::test]
async fn cert_lifecycle_an_older_record_put_back_is_refused() {
    let (_dir, store) = store();
    let sealer = sealer();
    let ca = ca("Test CA");
    let mut first = issued(&["web.gw.test"], &ca);
    first
        .save("web.gw.test", &store, &sealer, None)
        .await
        .unwrap();
    let old_bytes = store.get("certs/web.gw.test").await.unwrap().unwrap().value;
    let mut second = issued(&["web.gw.test"], &ca);
    second
        .save("web.gw.test", &store, &sealer, None)
        .await
        .unwrap();
    assert_eq!(second.generation, 2, "each write is a new generation");

    store.put("certs/web.gw.test", &old_bytes).await.unwrap();
    let err = Issued::load("web.gw.test", &store, &sealer, second.generation)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rollback"), "{err}");
    // Without a generation to hold it to (a fresh process), the old record is ours and opens.
    assert_eq!(
        Issued::load("web.gw.test", &store, &sealer, 0)
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
}

#[tokio::test]
async fn cert_lifecycle_a_chain_must_name_the_order_and_chain_to_its_issuer() {
    let ca1 = ca("CA one");
    let names = vec!["web.gw.test".to_owned(), "*.web.gw.test".to_owned()];
    let key = CertKey::generate(KeyType::EcdsaP256).unwrap();
    let good = leaf(&ca1, &key, &["web.gw.test", "*.web.gw.test"]);
    check_chain(&names, &[good.clone(), ca1.der.clone()]).unwrap();

    let extra = leaf(
        &ca1,
        &key,
        &["web.gw.test", "*.web.gw.test", "attacker.example"],
    );
    let err = check_chain(&names, &[extra, ca1.der.clone()]).unwrap_err();
    assert!(err.to_string().contains("attacker.example"), "{err}");

    let fewer = leaf(&ca1, &key, &["web.gw.test"]);
    assert!(check_chain(&names, &[fewer, ca1.der.clone()]).is_err());

    let err = check_chain(&names, &[good.clone(), ca("CA two").der.clone()]).unwrap_err();
    assert!(err.to_string().contains("the CA's chain"), "{err}");

    let err = check_chain(&names, std::slice::from_ref(&good)).unwrap_err();
    assert!(err.to_string().contains("no issuer"), "{err}");
}
